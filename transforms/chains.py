"""The standard pre- and post-processing chains, one definition shared by the bundle, the trainer and the CLI.

Inference, end to end::

    pre = get_preprocessing(mode="whole_brain", with_label=False)
    post = get_postprocessing(pre)
    samples = pre({"image": "scan.nii.gz"})              # whole_brain: [left, right]; precropped: one dict
    batch = list_data_collate(samples if isinstance(samples, list) else [samples])
    batch["pred"] = plane_inferer()(batch["image"], net2d)     # (B, C, 48, 64, 64)
    inverted = [post(s) for s in decollate_batch(batch)]  # each "pred" (1, X, Y, Z) on the scan's grid
    label_map = merge_sides(inverted)                     # whole_brain; precropped: inverted[0]["pred"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from monai.transforms import AsDiscreted, Compose, EnsureChannelFirstd, EnsureTyped, Invertd, Orientationd, Spacingd

from .cleanup import KeepLargestComponentd
from .context import SagittalContextd
from .intensity import ScaleIntensityRangePercentilesNonzerod
from .keys import IMAGE, LABEL, PRED, SIDE
from .labels import MapLabelsd
from .loading import scan_loader
from .mirror import MirrorSided
from .roi import DEFAULT_ROI_SIZE, HippocampalROICropd
from .sanity import CheckScand

__all__ = ["get_loading", "get_preprocessing", "get_postprocessing"]


def get_loading(with_label: bool = True, pixdim: Sequence[float] = (1.0, 1.0, 1.0)) -> Compose:
    """Return load -> channel first -> input checks -> RAS -> ``pixdim`` resampling (image bilinear, label nearest).

    The checks (:class:`~hippogan.transforms.sanity.CheckScand`) refuse what cannot be a T1 volume and shift the
    image's minimum to 0; the geometric steps are invertible.

    Args:
        with_label: also load ``"label"``.
        pixdim: output voxel spacing, mm.

    Input ``{"image": path[, "label": path]}`` (NIfTI file or DICOM series folder); output ``(1, X, Y, Z)``
    MetaTensors, float32, RAS, ``pixdim`` mm, affine in world mm.
    """
    if len(tuple(pixdim)) != 3 or min(pixdim) <= 0:
        raise ValueError(f"get_loading: pixdim must be 3 positive spacings (mm), got {pixdim!r}.")
    keys = (IMAGE, LABEL) if with_label else (IMAGE,)
    return Compose(
        [
            scan_loader(keys),
            EnsureChannelFirstd(keys),
            CheckScand(IMAGE),
            Orientationd(keys, axcodes="RAS", labels=None),
            Spacingd(keys, pixdim=tuple(pixdim), mode=("bilinear", "nearest")[: len(keys)]),
        ]
    )


def get_preprocessing(
    mode: str = "precropped",
    roi_size: Sequence[int] = DEFAULT_ROI_SIZE,
    with_label: bool = True,
    mirror: bool = False,
    label_map: str | Mapping | None = None,
    pixdim: Sequence[float] = (1.0, 1.0, 1.0),
    percentiles: Sequence[float] = (0.5, 99.5),
    roi_kwargs: Mapping | None = None,
    context: int = 0,
) -> Compose:
    """Return the deterministic pre-processing: path(s) in, ROI sample(s) out.

    Steps: :func:`get_loading` (NIfTI file or DICOM series folder -> channel first -> RAS -> ``pixdim``
    spacing, image bilinear, label nearest) -> label mapping -> :class:`HippocampalROICropd` ->
    percentile rescale of the image to [0, 1] on its nonzero voxels (0.5..99.5 by default, clipped) ->
    optional mirroring of left samples -> optional neighbouring sagittal planes as channels
    (:class:`~hippogan.transforms.context.SagittalContextd`, 2.5D input). Every geometric step is invertible, so :func:`get_postprocessing`
    maps a prediction back.

    Args:
        mode: ``"precropped"`` (MSD-like crops; one dict out), ``"whole_brain"`` (MNI-space scans;
            a list of two dicts out, left and right, tagged in ``"side"``) or ``"auto"`` (per scan, by its
            field of view; see :class:`HippocampalROICropd`).
        roi_size: ROI shape, voxels (RAS x, y, z).
        with_label: also load and transform ``"label"`` (training, evaluation).
        mirror: flip left samples along x so both sides share the right side's orientation.
        label_map: label-value mapping spec for :class:`~hippogan.transforms.labels.MapLabelsd`
            (``None``: labels kept as they are).
        pixdim: output voxel spacing, mm.
        percentiles: lower and upper intensity percentiles mapped to 0 and 1.
        roi_kwargs: other :class:`HippocampalROICropd` arguments (``box_size``, ``left_center``, ...).
        context: sagittal neighbours stacked on each side as image channels (0: one channel, the paper).

    Input: ``{"image": path[, "label": path]}``. Output per sample: ``"image"`` ``(2 * context + 1, *roi_size)``
    float32 in [0, 1], ``"label"`` ``(1, *roi_size)`` (values of the label map), ``"side"``.
    """
    if len(tuple(percentiles)) != 2:
        raise ValueError(f"get_preprocessing: percentiles must be (lower, upper), got {percentiles!r}.")
    keys = (IMAGE, LABEL) if with_label else (IMAGE,)
    # a flat list: CacheDataset stops caching at a nested Compose (Compose is Randomizable)
    transforms = list(get_loading(with_label=with_label, pixdim=pixdim).transforms)
    if with_label and label_map is not None:
        transforms.append(MapLabelsd(LABEL, label_map))
    transforms += [
        HippocampalROICropd(keys, mode=mode, roi_size=roi_size, side_key=SIDE, **dict(roi_kwargs or {})),
        ScaleIntensityRangePercentilesNonzerod(IMAGE, lower=percentiles[0], upper=percentiles[1]),
    ]
    if mirror:
        transforms.append(MirrorSided(keys, mirror_side="left", side_key=SIDE))
    if context:
        transforms.append(SagittalContextd(IMAGE, context=context))
    return Compose(transforms)


def get_postprocessing(
    preprocessing: Compose, argmax: bool = True, pred_key: str = PRED, largest_component: bool = False
) -> Compose:
    """Return the per-sample post-processing: ROI prediction in, map on the input scan's grid out.

    Args:
        preprocessing: the chain from :func:`get_preprocessing` that made the sample.
        argmax: turn ``(C, *roi_size)`` network outputs into a ``(1, *roi_size)`` label map first;
            ``False`` when ``pred_key`` already holds labels (or to invert probabilities, with nearest).
        pred_key: key of the prediction.
        largest_component: then keep the largest connected component of the hippocampus
            (:class:`~hippogan.transforms.cleanup.KeepLargestComponentd`), on the input grid.

    Applied to one decollated sample (holding ``"image"``, whose trace drives the inversion), it undoes
    mirroring, the ROI crop, spacing and orientation with nearest interpolation: the result has the
    input's shape ``(C, X, Y, Z)`` and affine, zero outside the ROI. Whole-brain scans then go through
    :func:`~hippogan.transforms.roi.merge_sides`.
    """
    # a plain tensor prediction would be skipped by Invertd: make it a MetaTensor (it takes the image's trace)
    transforms = [EnsureTyped(pred_key, data_type="tensor", track_meta=True)]
    if argmax:
        transforms.append(AsDiscreted(pred_key, argmax=True))
    transforms.append(Invertd(pred_key, transform=preprocessing, orig_keys=IMAGE, nearest_interp=True, to_tensor=True))
    if largest_component:
        transforms.append(KeepLargestComponentd(pred_key))
    return Compose(transforms)
