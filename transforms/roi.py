"""The paper's fixed hippocampal ROI crop (Deng et al., Sect. 3.1, Fig. 4), invertible.

Two modes, both ending in a volume of ``roi_size`` voxels (default ``(48, 64, 64)``, RAS x, y, z, 1 mm), so
a sagittal plane (y, z) is 64x64 as in the paper:

- ``"precropped"``: the input already is a hippocampus crop (MSD); it is padded or cropped, centred.
- ``"whole_brain"``: the input is a whole-brain T1 in MNI space, RAS, 1 mm. Two fixed boxes given in world
  coordinates (mm), one per hippocampus, are mapped to voxels through the image's affine; each box's
  content is cut out (default field of view 36x50x36 mm, the size of an MSD crop) and padded, centred, to
  ``roi_size``. One scan yields two samples, left then right.

Each output records what was cut and padded (``push_transform(..., extra_info=...)``); ``inverse`` puts a
map predicted on the ROI back on the input grid (input shape and affine), zero outside the box.
:func:`merge_sides` then combines the two inverted side maps of a whole-brain scan into one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy

import numpy as np
import torch
from monai.data import MetaTensor, get_track_meta
from monai.data.utils import affine_to_spacing
from monai.transforms import BorderPad, InvertibleTransform, MapTransform, SpatialCrop
from monai.transforms.traits import MultiSampleTrait
from monai.utils import TraceKeys, convert_to_tensor
from nibabel.orientations import aff2axcodes

from .keys import LEFT, PRED, RIGHT, SIDE, UNKNOWN_SIDE
from .loading import source_name

__all__ = [
    "AUTO",
    "ROI_MODES",
    "WHOLE_BRAIN_MIN_EXTENT_MM",
    "DEFAULT_ROI_SIZE",
    "field_of_view_mm",
    "DEFAULT_BOX_SIZE",
    "DEFAULT_LEFT_CENTER",
    "DEFAULT_RIGHT_CENTER",
    "world_box_to_voxels",
    "HippocampalROICrop",
    "HippocampalROICropd",
    "HippocampalROICropD",
    "HippocampalROICropDict",
    "merge_sides",
]

ROI_MODES = ("precropped", "whole_brain")
AUTO = "auto"
"""Mode that picks ``"whole_brain"`` for a volume whose field of view exceeds :data:`WHOLE_BRAIN_MIN_EXTENT_MM`."""
WHOLE_BRAIN_MIN_EXTENT_MM = 100.0
"""Field of view (mm, along any axis) above which mode ``"auto"`` takes a volume as a whole brain: MSD crops span
at most ~60 mm, a whole-brain T1 ~150 mm or more."""
DEFAULT_ROI_SIZE = (48, 64, 64)
"""Voxels (RAS x, y, z): holds every MSD crop (up to 43x59x47) and gives 64x64 sagittal planes."""
DEFAULT_BOX_SIZE = (36.0, 50.0, 36.0)
"""Field of view of a whole-brain box, mm (RAS x, y, z): about the size of an MSD crop."""
DEFAULT_LEFT_CENTER = (-25.0, -22.0, -14.0)
"""Centre of the left box, MNI mm: the left hippocampus of the MNI152 template (left is negative x)."""
DEFAULT_RIGHT_CENTER = (25.0, -22.0, -14.0)
"""Centre of the right box, MNI mm."""


def world_box_to_voxels(
    affine: np.ndarray | torch.Tensor, center: Sequence[float], size: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Return the voxel box ``[start, end)`` (3 ints each) of a world box, for an axis-aligned image.

    Args:
        affine: the image's 4x4 voxel-to-world matrix (mm).
        center: the box centre in world coordinates, mm.
        size: the box edge lengths along the image axes, mm.

    The box may reach outside the image (negative start, end past the shape); the caller clips.
    """
    affine = np.asarray(affine, dtype=np.float64)
    center_vox = np.linalg.solve(affine, np.append(np.asarray(center, dtype=np.float64), 1.0))[:3]
    size_vox = np.maximum(np.round(np.asarray(size, dtype=np.float64) / affine_to_spacing(affine, r=3)), 1).astype(int)
    start = np.floor(center_vox - (size_vox - 1) / 2.0 + 0.5).astype(int)
    return start, start + size_vox


def field_of_view_mm(img: torch.Tensor) -> np.ndarray:
    """Field of view of a channel-first volume ``(C, X, Y, Z)`` along its 3 axes, mm (voxels x spacing).

    A plain tensor (no affine) counts as 1 mm voxels.
    """
    spacing = affine_to_spacing(img.affine, r=3).numpy() if isinstance(img, MetaTensor) else np.ones(3)
    return np.asarray(img.shape[1:], dtype=np.float64) * np.asarray(spacing, dtype=np.float64)


def _as_triple(value: Sequence[float] | Sequence[int], name: str, positive: bool = False) -> tuple[float, ...]:
    values = tuple(np.asarray(value, dtype=np.float64).ravel().tolist()) if value is not None else ()
    if len(values) != 3 or (positive and min(values) <= 0):
        kind = "positive numbers" if positive else "numbers"
        raise ValueError(f"HippocampalROICrop: {name} must be 3 {kind} (RAS x, y, z), got {value!r}.")
    return values


class HippocampalROICrop(InvertibleTransform, MultiSampleTrait):
    """Cut the fixed hippocampal ROI out of a channel-first volume ``(C, X, Y, Z)`` in RAS.

    Args:
        mode: ``"precropped"`` (pad or crop, centred, to ``roi_size``; returns one volume),
            ``"whole_brain"`` (two MNI boxes; returns ``[left, right]``) or ``"auto"`` (``"whole_brain"``
            when the volume's field of view exceeds :data:`WHOLE_BRAIN_MIN_EXTENT_MM` along any axis, else
            ``"precropped"``; decided per volume).
        roi_size: output spatial shape, voxels (RAS x, y, z).
        box_size: whole-brain box field of view, mm (RAS x, y, z); at most ``roi_size`` (at 1 mm) unless
            ``mode`` is ``"precropped"``, which does not use it.
        left_center: whole-brain left box centre, MNI mm.
        right_center: whole-brain right box centre, MNI mm.

    Returns ``(C, *roi_size)`` MetaTensor(s) whose affine maps ROI voxels to the input's world space.
    Whole-brain input must be RAS (``Orientationd(axcodes="RAS")`` first) and registered to MNI space
    (the boxes are fixed world coordinates); 1 mm spacing (``Spacingd``) keeps the box content in voxels.
    """

    sides = (LEFT, RIGHT)

    def __init__(
        self,
        mode: str = "precropped",
        roi_size: Sequence[int] = DEFAULT_ROI_SIZE,
        box_size: Sequence[float] = DEFAULT_BOX_SIZE,
        left_center: Sequence[float] = DEFAULT_LEFT_CENTER,
        right_center: Sequence[float] = DEFAULT_RIGHT_CENTER,
    ) -> None:
        if mode not in (AUTO, *ROI_MODES):
            raise ValueError(f"HippocampalROICrop: unknown mode {mode!r}; expected one of {(AUTO, *ROI_MODES)}.")
        roi = _as_triple(roi_size, "roi_size", positive=True)
        if any(r != int(r) for r in roi):
            raise ValueError(f"HippocampalROICrop: roi_size must be whole voxel counts, got {roi_size!r}.")
        self.mode = mode
        self.roi_size = tuple(int(r) for r in roi)
        self.box_size = _as_triple(box_size, "box_size", positive=True)
        if mode != ROI_MODES[0] and any(b > r for b, r in zip(self.box_size, self.roi_size)):
            raise ValueError(
                f"HippocampalROICrop: box_size {self.box_size} mm exceeds roi_size {self.roi_size} voxels at 1 mm."
            )
        self.centers = {LEFT: _as_triple(left_center, "left_center"), RIGHT: _as_triple(right_center, "right_center")}

    def __call__(self, img: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Return the ROI ``(C, *roi_size)`` (precropped) or ``[left, right]`` ROIs (whole_brain) of ``img``."""
        img = convert_to_tensor(img, track_meta=get_track_meta())
        shape = np.asarray(img.shape[1:])
        if len(shape) != 3:
            raise ValueError(f"HippocampalROICrop: expected a (C, X, Y, Z) volume, got shape {tuple(img.shape)}.")
        if self.resolve_mode(img) == "precropped":
            start = (shape - np.minimum(shape, self.roi_size)) // 2
            end = start + np.minimum(shape, self.roi_size)
            return self._cut(img, start, end, UNKNOWN_SIDE)
        if not isinstance(img, MetaTensor):
            raise ValueError("HippocampalROICrop: whole_brain mode needs a MetaTensor (its affine places the boxes).")
        affine = img.affine.numpy()
        name = source_name(img, "the input")
        if "".join(aff2axcodes(affine)) != "RAS":
            raise ValueError(
                f"HippocampalROICrop: whole_brain mode expects a RAS image (apply Orientationd(axcodes='RAS') first); "
                f"{name} is {''.join(aff2axcodes(affine))}."
            )
        samples = []
        for side in self.sides:
            start, end = world_box_to_voxels(affine, self.centers[side], self.box_size)
            if np.any(np.minimum(end, shape) <= np.maximum(start, 0)):
                raise ValueError(
                    f"HippocampalROICrop: the {side} box (centre {self.centers[side]} mm) lies outside {name} "
                    f"(shape {tuple(shape)}); whole_brain mode expects a scan in MNI space."
                )
            samples.append(self._cut(img, start, end, side))
        return samples

    def resolve_mode(self, img: torch.Tensor) -> str:
        """The mode applied to ``img``: ``mode`` itself, or for ``"auto"`` the one its field of view implies."""
        if self.mode != AUTO:
            return self.mode
        return ROI_MODES[1] if float(field_of_view_mm(img).max()) > WHOLE_BRAIN_MIN_EXTENT_MM else ROI_MODES[0]

    def _cut(self, img: torch.Tensor, start: np.ndarray, end: np.ndarray, side: str) -> torch.Tensor:
        """Crop ``img`` to the voxel box ``[start, end)`` (clipped to the image), pad it, centred, to ``roi_size``."""
        shape, roi = np.asarray(img.shape[1:]), np.asarray(self.roi_size)
        excess = np.maximum(end - start - roi, 0)
        start, end = start + excess // 2, end - (excess - excess // 2)
        lo, hi = np.clip(start, 0, shape), np.clip(end, 0, shape)
        pad_lo = (roi - (end - start)) // 2 + (lo - start)
        pad_hi = roi - pad_lo - (hi - lo)
        cropped = [int(v) for pair in zip(lo, shape - hi) for v in pair]
        padded = [int(v) for pair in zip(pad_lo, pad_hi) for v in pair]
        out = self._crop_pad(img, lo.tolist(), hi.tolist(), padded)
        extra = {"cropped": cropped, "padded": padded, "side": side, "roi_mode": ROI_MODES[0] if side == UNKNOWN_SIDE else ROI_MODES[1]}
        return self.push_transform(out, orig_size=tuple(int(s) for s in shape), extra_info=extra)

    @staticmethod
    def _crop_pad(img: torch.Tensor, start: Sequence[int], end: Sequence[int], border: Sequence[int]) -> torch.Tensor:
        """Crop to ``[start, end)``, pad by ``border`` (lo, hi per axis); the affine follows, nothing is traced."""
        cropper, padder = SpatialCrop(roi_start=start, roi_end=end), BorderPad(spatial_border=list(border))
        with cropper.trace_transform(False), padder.trace_transform(False):
            return padder(cropper(img))

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Put an ROI map ``(C, *roi_size)`` back on the input grid (its shape and affine), zero outside the box."""
        info = self.pop_transform(data)[TraceKeys.EXTRA_INFO]
        padded, cropped = np.asarray(info["padded"]).reshape(3, 2), info["cropped"]
        start = padded[:, 0]
        end = np.asarray(data.shape[1:]) - padded[:, 1]
        return self._crop_pad(data, start.tolist(), end.tolist(), cropped)


class HippocampalROICropd(MapTransform, InvertibleTransform, MultiSampleTrait):
    """Dictionary wrapper of :class:`HippocampalROICrop`: same box for every key (image and label stay aligned).

    Args:
        keys: keys of the ``(C, X, Y, Z)`` volumes to crop (e.g. ``("image", "label")``).
        mode, roi_size, box_size, left_center, right_center: as in :class:`HippocampalROICrop`.
        side_key: key that receives the sample's side: ``"left"``/``"right"`` in whole-brain mode; in
            precropped mode an existing value is kept (e.g. from a manifest), else ``"unknown"``.
        allow_missing_keys: do not raise when a key is absent.

    Returns one dict (precropped) or a list of two dicts, left then right (whole_brain), as MONAI's
    multi-sample transforms (e.g. ``RandCropByPosNegLabeld``) do; ``Compose`` maps later transforms over it.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        mode: str = "precropped",
        roi_size: Sequence[int] = DEFAULT_ROI_SIZE,
        box_size: Sequence[float] = DEFAULT_BOX_SIZE,
        left_center: Sequence[float] = DEFAULT_LEFT_CENTER,
        right_center: Sequence[float] = DEFAULT_RIGHT_CENTER,
        side_key: str = SIDE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cropper = HippocampalROICrop(mode, roi_size, box_size, left_center, right_center)
        self.side_key = side_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor] | list[dict]:
        """Return the ROI sample (precropped) or the ``[left, right]`` samples (whole_brain) of ``data``."""
        d = dict(data)
        first = next(iter(self.key_iterator(d)), None)
        if first is None or self.cropper.resolve_mode(d[first]) == "precropped":
            for key in self.key_iterator(d):
                d[key] = self.cropper(d[key])
            d.setdefault(self.side_key, UNKNOWN_SIDE)
            return d
        keys = list(self.key_iterator(d))
        crops = {key: self.cropper(d[key]) for key in keys}
        samples = []
        for i, side in enumerate(self.cropper.sides):
            sample = {k: deepcopy(v) for k, v in d.items() if k not in keys}
            sample.update({key: crops[key][i] for key in keys})
            sample[self.side_key] = side
            samples.append(sample)
        return samples

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Put each key's ROI map back on its input grid (one sample: one side in whole-brain mode)."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cropper.inverse(d[key])
        return d


HippocampalROICropD = HippocampalROICropDict = HippocampalROICropd


def merge_sides(samples: Sequence[Mapping[Hashable, torch.Tensor]], key: Hashable = PRED) -> torch.Tensor:
    """Combine per-side maps, already inverted to the input grid, into one map of that grid.

    Each inverted side map holds its prediction inside its box and zero elsewhere; the boxes are disjoint,
    so the voxel-wise maximum keeps each box's prediction and zero outside both.

    Args:
        samples: the inverted samples of one scan (e.g. left and right), each with ``key`` of shape
            ``(C, X, Y, Z)`` on the same grid.
        key: the key holding the map.

    Returns:
        ``(C, X, Y, Z)``, a MetaTensor with the first sample's metadata (input affine) when given one.
    """
    if not samples:
        raise ValueError("merge_sides: no samples given; expected the inverted left and right samples of one scan.")
    maps = []
    for i, sample in enumerate(samples):
        if key not in sample:
            raise ValueError(f"merge_sides: sample {i} has no key {key!r}; keys are {list(sample)}.")
        maps.append(sample[key])
    first = maps[0]
    for i, m in enumerate(maps[1:], start=1):
        if m.shape != first.shape:
            raise ValueError(
                f"merge_sides: {key!r} of sample {i} has shape {tuple(m.shape)}, expected {tuple(first.shape)}."
            )
        if isinstance(m, MetaTensor) and isinstance(first, MetaTensor) and not torch.allclose(m.affine, first.affine):
            raise ValueError(f"merge_sides: {key!r} of sample {i} is on another grid (affine differs); invert first.")
    merged = torch.stack([m.as_tensor() if isinstance(m, MetaTensor) else torch.as_tensor(m) for m in maps]).amax(dim=0)
    if isinstance(first, MetaTensor):
        merged = MetaTensor(merged, meta=deepcopy(first.meta), applied_operations=deepcopy(first.applied_operations))
    return merged
