"""Localisation of the hippocampi in a whole-brain T1 by affine registration to the MNI152 template, invertible.

A whole-brain scan straight from the scanner (any orientation, voxel size and intensity scale, skull on or off)
is registered affinely to the MNI152 T1 template that nilearn ships (``load_mni152_template(resolution=1)``,
skull-stripped, 1 mm, 197x233x189) with SimpleITK, then resampled onto the template's grid: 1 mm, RAS,
axis-aligned, so the fixed MNI boxes of :class:`~hippogan.transforms.roi.HippocampalROICropd` (mode
``"whole_brain"``) land on the hippocampi. ``inverse`` maps a map on the template grid (a prediction carrying the
image's trace, e.g. through MONAI's ``Invertd``) back onto the input's own grid and affine, so volumes counted
there are in the subject's own mm³.

Registration (:func:`register_to_template`), on 2 mm copies of both images:

1. Initialisation: the centre of the scan's head mask (Otsu threshold, largest component, holes filled) is put on
   the centre of the template's brain mask (``CenteredTransformInitializer``, ``MOMENTS``). Around it, 2025
   similarity transforms (pitch 0, ±15°, ±30°; roll and yaw 0, ±15°; shifts 0, ±12 mm anterior-posterior and
   0, ±12, ±24 mm superior-inferior; scale 0.85, 1, 1.15) are scored at 8 mm in one vectorised pass (mutual
   information of a joint histogram); the best 5 are refined at 8 mm (SimpleITK) and the best refined one kept.
   A skull-on head is larger than the skull-stripped template's brain, and its centre lies below and in front of
   the brain's: the grid's best start alone is sometimes a false match, the best refined one was not in any test.
2. Similarity (7 dof) at 4 then 2 mm, then affine (12 dof) at 4 then 2 mm: Mattes mutual information (any
   intensity scale) on 25% of the template's brain mask dilated by 6 mm, regular-step gradient descent, at most
   40 iterations per level. The affine fit is kept unless the similarity fit scores a better quality (by more
   than 0.02): a 12-dof fit of a skull-on head can drift where the 7-dof one holds.
3. Checks: the quality (below), the hippocampal boxes inside the scan's field of view, the determinant.

Outputs written to the data dict by :class:`RegisterToTemplated`:

- ``registration_quality``: the mean local normalised cross-correlation (14 mm windows, on the 2 mm grid)
  between the registered scan and the template inside the template's brain mask (where the scan has data), in
  [-1, 1]. Local windows make it insensitive to the scan's contrast, bias field and skull (a global NCC scored a
  good registration of one shared T1 lower than a 5 mm error of the other). Measured (benchmarks/results/
  registration.md): good registrations of the skull-on native T1s 0.53-0.55, the moved template 0.98-1.0; the
  same T1s 10 mm or 20° off 0.2-0.4, noise 0. Below ``min_quality`` (default :data:`MIN_QUALITY`) the scan
  fails; :data:`QUALITY_WARN` is a suggested flag level.
- ``etiv_scale``: ``|det|`` of the linear part of the subject-to-MNI map, the atlas scaling factor (ASF) of
  Buckner et al. 2004 (NeuroImage 23:724-738): a head larger than the template is shrunk (det < 1).
- ``etiv_mm3``: estimated total intracranial volume, ``template_icv_mm3 / etiv_scale``, the idea behind
  FreeSurfer's eTIV (eTIV = 1948106 mm³ / det of its talairach.xfm). ``template_icv_mm3`` defaults to the volume
  of the template's brain mask (1,882,989 mm³ for nilearn's MNI152), so the figure is the template's mask volume
  scaled to the head; it is not a measured intracranial volume. Limits: an affine map matches the brain's
  overall size and shape, not its intracranial cavity (skull thickness, CSF, atrophy and the cerebellum's
  share all vary); Buckner et al. report r ~ 0.93 against manual TIV with the ASF and a systematic offset that
  depends on the atlas; values from different templates or tools are not interchangeable, use it to normalise
  within one study.

Failures raise ``ValueError`` naming the file: a SimpleITK error, quality below ``min_quality``, an
``etiv_scale`` outside ``scale_range`` (default [0.5, 2]), or hippocampal boxes less than ``min_box_coverage``
inside the scan's field of view (e.g. a head cut above the hippocampi).

Modes: ``"auto"`` registers a scan whose field of view exceeds 100 mm along any axis and passes a crop through;
``"register"`` always registers; ``"mni"`` (already in MNI space) passes the scan through but measures its
quality against the template as it lies (a whole brain given as ``mni`` that is not MNI-aligned scores low);
``"precropped"`` passes through. A pass-through records a no-op, so ``Invertd`` works the same in every mode.

SimpleITK is imported inside functions (``hippogan.transforms`` imports without it; only registration needs
it); the template is read once per process.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor, get_track_meta
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import TraceKeys, convert_to_tensor, ensure_tuple_rep
from scipy import ndimage

from .keys import IMAGE
from .loading import source_name
from .sanity import SCAN_WARNINGS
from .roi import (
    DEFAULT_BOX_SIZE,
    DEFAULT_LEFT_CENTER,
    DEFAULT_RIGHT_CENTER,
    WHOLE_BRAIN_MIN_EXTENT_MM,
    field_of_view_mm,
)

__all__ = [
    "REGISTRATION_MODES",
    "MIN_QUALITY",
    "QUALITY_WARN",
    "REGISTRATION_QUALITY",
    "ETIV_SCALE",
    "ETIV_MM3",
    "MNI_FROM_SUBJECT",
    "REGISTRATION_KEYS",
    "RegistrationResult",
    "brain_mask_on_grid",
    "registration_warnings",
    "load_template",
    "register_to_template",
    "resample_affine",
    "known_transform",
    "simulate_acquisition",
    "RegisterToTemplate",
    "RegisterToTemplated",
    "RegisterToTemplateD",
    "RegisterToTemplateDict",
]

logger = logging.getLogger(__name__)

REGISTRATION_MODES = ("auto", "register", "mni", "precropped")
"""``auto``: register a whole brain (field of view > 100 mm along any axis), pass a crop through; ``register``:
always register; ``mni``: already in MNI space, pass through (quality measured); ``precropped``: pass through."""
MIN_QUALITY = 0.3
"""Registration quality (mean local NCC) below which a scan fails: good registrations of the skull-on native T1s
score 0.53-0.55, the same scans 20 mm or 20° off about 0.1-0.25, noise about 0."""
MIN_BOX_COVERAGE = 0.85
"""Fraction of the hippocampal boxes that must lie in the scan's field of view, else the scan fails; below
:data:`FULL_BOX_COVERAGE` it is flagged. The template cut to its top 120 mm has 89% of the boxes inside and loses 5% of
its hippocampal volume (label maps: Dice 0.95 with the uncut template's); cut to 117 mm, 78%. The template scaled
by 1.15 and cut to 150 mm has 96% inside and loses nothing."""
FULL_BOX_COVERAGE = 0.95
QUALITY_WARN = 0.45
"""Suggested level below which a registered scan is flagged for a look (5-10 mm or 10° off score about 0.3-0.45)."""
REGISTRATION_QUALITY = "registration_quality"
ETIV_SCALE = "etiv_scale"
ETIV_MM3 = "etiv_mm3"
MNI_FROM_SUBJECT = "mni_from_subject"
REGISTRATION_KEYS = (REGISTRATION_QUALITY, ETIV_SCALE, ETIV_MM3, MNI_FROM_SUBJECT)
"""The data-dict keys :class:`RegisterToTemplated` writes (per scan, not per voxel)."""
_REG_SPACING_MM = 2.0
_LNCC_WINDOW = 7  # voxels of the 2 mm grid: 14 mm
_MASK_DILATION_MM = 6.0
_SAMPLING = 0.25  # fraction of the metric mask's voxels sampled per iteration
_COARSE_SHRINK = 4  # the start search runs on the 2 mm template shrunk 4x: 8 mm voxels
_SIMILARITY_LEVELS = ((2, 2.0), (1, 1.0))  # (shrink factor of the 2 mm grid, smoothing sigma mm), after the search
_AFFINE_LEVELS = ((2, 2.0), (1, 1.0))
_MAX_ITERATIONS = 40  # per pyramid level
_AFFINE_TOLERANCE = 0.02  # the affine fit is kept unless the similarity fit's quality beats it by more than this
# exhaustive start search over a Similarity3D transform (versor x, y, z; shift x, y, z mm; scale): steps each side
# and step sizes: rotations 0, ±20° (pitch) and ±15° (roll, yaw), shifts 0, ±12 mm (y) and 0, ±12, ±24 mm (z),
# scales 0.85, 1, 1.15 (a versor component is sin(angle / 2))
_SEARCH_STEPS = (2, 1, 1, 0, 1, 2, 1)
_SEARCH_REFINED = 5  # best starts of the grid refined at 8 mm
_SEARCH_BINS = 16  # joint-histogram bins of the grid search's mutual information
_SEARCH_BATCH = 128  # grid starts scored at a time (memory: 128 x 4.5k samples)
_SEARCH_SCALES = (np.sin(np.radians(7.5)), np.sin(np.radians(7.5)), np.sin(np.radians(7.5)), 1.0, 12.0, 12.0, 0.15)


@dataclass
class RegistrationResult:
    """What :func:`register_to_template` found.

    Attributes:
        mni_from_subject: 4x4 matrix, subject world (RAS mm) -> MNI world (RAS mm).
        quality: mean local NCC with the template inside its brain mask, in [-1, 1].
        etiv_scale: ``|det|`` of the linear part of ``mni_from_subject`` (Buckner's atlas scaling factor).
        etiv_mm3: ``template_icv_mm3 / etiv_scale``, mm³.
        box_coverage: fraction of the hippocampal boxes' voxels inside the scan's field of view, in [0, 1].
        seconds: wall time of the registration, s.
        registered: ``False`` when the scan was only evaluated as it lies (``identity``, mode ``mni``); then
            ``mni_from_subject`` is the identity and ``etiv_scale``/``etiv_mm3`` are NaN.
        dof: degrees of freedom of the transform kept: 12 (affine), 7 (similarity, when the affine fit scored
            worse), 0 (not registered).
    """

    mni_from_subject: np.ndarray
    quality: float
    etiv_scale: float
    etiv_mm3: float
    box_coverage: float
    seconds: float
    registered: bool = True
    dof: int = 12


@dataclass(frozen=True)
class _Template:
    array: np.ndarray  # (X, Y, Z) float32, 1 mm
    affine: np.ndarray  # 4x4, voxel -> MNI RAS mm
    icv_mm3: float  # brain mask volume, mm³
    fixed: object  # SimpleITK image, 2 mm
    mask: np.ndarray  # (Z, Y, X) bool brain mask on the 2 mm grid (SimpleITK index order reversed)
    metric_mask: object  # SimpleITK uint8 image: brain mask dilated
    coarse: object  # SimpleITK image: the template smoothed and shrunk to 8 mm, for the start search
    coarse_mask: object  # SimpleITK uint8 image: metric_mask on the coarse grid
    coarse_points: np.ndarray  # (4, N) world coordinates (homogeneous) of the coarse mask's voxels
    coarse_bins: np.ndarray  # (N,) their template intensities as histogram bins (0.._SEARCH_BINS-1)
    fixed_array: np.ndarray  # (Z, Y, X) float64 template on the 2 mm grid
    grid_world: np.ndarray  # (4, N) world coordinates of the 2 mm grid's voxel centres (Z, Y, X order, flattened)


def _to_sitk(array: np.ndarray, affine: np.ndarray):
    """A (X, Y, Z) array and its voxel-to-world affine as a SimpleITK image; physical space = the affine's world."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)))
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((linear / spacing).ravel().tolist())
    image.SetOrigin(np.asarray(affine, dtype=np.float64)[:3, 3].tolist())
    return image


def _downsample(image, spacing: float):
    """Block averaging, Gaussian anti-aliasing, then linear resampling to ``spacing`` mm, same directions."""
    import SimpleITK as sitk

    factors = np.maximum(np.floor(spacing / np.asarray(image.GetSpacing()) + 1e-6), 1).astype(int)
    if factors.max() > 1:  # cheap averaging of whole blocks first (e.g. 2x2x2 for 0.8-1 mm voxels)
        image = sitk.BinShrink(image, factors.tolist())
    old = np.asarray(image.GetSpacing())
    sigmas = np.sqrt(np.maximum(spacing**2 - old**2, 0.0)) / 2.355  # FWHM of the new voxel
    smooth = sitk.DiscreteGaussian(image, (sigmas**2).tolist(), 32, 0.01, True) if sigmas.max() > 0 else image
    size = np.maximum(np.ceil(np.asarray(image.GetSize()) * old / spacing), 1).astype(int).tolist()
    return sitk.Resample(
        smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [spacing] * 3, image.GetDirection(), 0.0,
        sitk.sitkFloat32,
    )


@functools.lru_cache(maxsize=4)
def load_template(template: str | None = None, brain_mask: str | None = None) -> _Template:
    """Read the template T1 and its brain mask (default nilearn's MNI152, 1 mm) and prepare the 2 mm copies.

    Args:
        template: a NIfTI T1 template in MNI space; ``None``: ``nilearn.datasets.load_mni152_template(resolution=1)``.
        brain_mask: its brain mask (NIfTI, nonzero = brain); ``None``: ``load_mni152_brain_mask(resolution=1)``
            (resampled to ``template``'s grid when that is another file).
    """
    import nibabel as nib
    import SimpleITK as sitk
    from nilearn import datasets, image

    t_img = datasets.load_mni152_template(resolution=1) if template is None else nib.load(template)
    m_img = datasets.load_mni152_brain_mask(resolution=1) if brain_mask is None else nib.load(brain_mask)
    if m_img.shape[:3] != t_img.shape[:3] or not np.allclose(m_img.affine, t_img.affine, atol=1e-3):
        m_img = image.resample_to_img(m_img, t_img, interpolation="nearest", force_resample=True, copy_header=True)
    array = np.asarray(t_img.get_fdata(dtype=np.float32))
    mask = np.asarray(m_img.get_fdata(dtype=np.float32)) > 0.5
    affine = np.asarray(t_img.affine, dtype=np.float64)
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    fixed = _downsample(_to_sitk(array, affine), _REG_SPACING_MM)
    mask_sitk = sitk.Resample(_to_sitk(mask.astype(np.float32), affine), fixed, sitk.Transform(), sitk.sitkLinear, 0.0)
    mask_2mm = sitk.GetArrayFromImage(mask_sitk) > 0.5
    iterations = int(round(_MASK_DILATION_MM / _REG_SPACING_MM))
    dilated = ndimage.binary_dilation(mask_2mm, iterations=iterations).astype(np.uint8)
    metric_mask = sitk.GetImageFromArray(dilated)
    metric_mask.CopyInformation(fixed)
    size_zyx = mask_2mm.shape
    zyx = np.indices(size_zyx).reshape(3, -1)
    index_xyz1 = np.vstack([zyx[::-1], np.ones((1, zyx.shape[1]))])
    grid_affine = _sitk_affine(fixed)
    coarse = _coarse(fixed, _COARSE_SHRINK)
    coarse_mask = sitk.Resample(metric_mask, coarse, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    coarse_zyx = np.nonzero(sitk.GetArrayFromImage(coarse_mask))
    coarse_points = _sitk_affine(coarse) @ np.vstack([np.vstack(coarse_zyx[::-1]), np.ones((1, len(coarse_zyx[0])))])
    coarse_values = sitk.GetArrayFromImage(coarse)[coarse_zyx]
    low, high = np.percentile(coarse_values, [0.5, 99.5])
    coarse_bins = _to_bins(coarse_values, low, high, _SEARCH_BINS)
    return _Template(
        array=array,
        affine=affine,
        icv_mm3=float(mask.sum()) * voxel_mm3,
        fixed=fixed,
        mask=mask_2mm,
        metric_mask=metric_mask,
        coarse=coarse,
        coarse_mask=coarse_mask,
        coarse_points=coarse_points,
        coarse_bins=coarse_bins,
        fixed_array=sitk.GetArrayFromImage(fixed).astype(np.float64),
        grid_world=grid_affine @ index_xyz1,
    )


def _coarse(image, shrink: int):
    """A 2 mm image smoothed (sigma = the new voxel size / 2, mm) and subsampled by ``shrink``."""
    import SimpleITK as sitk

    sigma = _REG_SPACING_MM * shrink / 2.0
    return sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, sigma), [shrink] * 3)


def _sitk_affine(image) -> np.ndarray:
    """The 4x4 voxel (x, y, z index) -> physical matrix of a SimpleITK image."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return affine


def _head_mask(image):
    """The head (or brain) of a 2 mm scan: Otsu foreground, largest component, closed, holes filled."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    finite = array[np.isfinite(array)]
    low, high = np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 0.0)
    clipped = sitk.GetImageFromArray(np.clip(np.nan_to_num(array, nan=low), low, high).astype(np.float32))
    foreground = sitk.GetArrayFromImage(sitk.OtsuThreshold(clipped, 0, 1)) > 0
    labels, count = ndimage.label(foreground)
    if count:
        foreground = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
        foreground = ndimage.binary_fill_holes(ndimage.binary_closing(foreground, iterations=2))
    mask = sitk.GetImageFromArray(foreground.astype(np.float32))
    mask.CopyInformation(image)
    return mask, int(foreground.sum())


def _matrix4(transform) -> np.ndarray:
    """The 4x4 matrix of a SimpleITK matrix-offset transform (fixed physical point -> moving physical point)."""
    matrix = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    center = np.asarray(transform.GetCenter(), dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = matrix
    out[:3, 3] = np.asarray(transform.GetTranslation(), dtype=np.float64) + center - matrix @ center
    return out


def _registration_method(
    template: _Template, levels: Sequence[tuple[int, float]] | None, threads: int | None
):
    """Mattes MI (32 bins) in the dilated brain mask, linear interpolation, over pyramid ``levels``
    ((shrink of the 2 mm grid, smoothing sigma mm), ...); ``None``: the precomputed 8 mm images, every voxel."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetInterpolator(sitk.sitkLinear)
    if levels is None:
        method.SetMetricSamplingStrategy(method.NONE)
        method.SetMetricFixedMask(template.coarse_mask)
    else:
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(_SAMPLING, 1)  # fixed seed: the same scan always gives the same result
        method.SetMetricFixedMask(template.metric_mask)
        method.SetShrinkFactorsPerLevel([level[0] for level in levels])
        method.SetSmoothingSigmasPerLevel([level[1] for level in levels])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    if threads is not None:
        method.SetNumberOfThreads(int(threads))
    return method


def _register(template: _Template, moving, threads: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Similarity then affine registration of a 2 mm scan; returns both ``subject_from_mni`` 4x4 matrices."""
    import SimpleITK as sitk

    head, head_voxels = _head_mask(moving)
    if head_voxels == 0:
        raise RuntimeError("no foreground found (an empty or constant image)")
    fixed_mask = sitk.GetImageFromArray(template.mask.astype(np.float32))
    fixed_mask.CopyInformation(template.fixed)
    rigid = sitk.CenteredTransformInitializer(
        fixed_mask, head, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    similarity = _initial_similarity(template, moving, rigid, threads)
    method = _registration_method(template, _SIMILARITY_LEVELS, threads)
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, _MAX_ITERATIONS, relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(similarity, inPlace=True)
    method.Execute(template.fixed, moving)
    transform = sitk.AffineTransform(3)
    transform.SetCenter(similarity.GetCenter())
    transform.SetMatrix(similarity.GetMatrix())
    transform.SetTranslation(similarity.GetTranslation())
    method = _registration_method(template, _AFFINE_LEVELS, threads)
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, _MAX_ITERATIONS, relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(template.fixed, moving)
    return _matrix4(similarity), _matrix4(transform)


def _to_bins(values: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    """Histogram bin indices ``0 .. bins - 1`` of ``values`` over ``[low, high]`` (clipped)."""
    return np.clip(((values - low) / max(high - low, 1e-12) * bins).astype(int), 0, bins - 1)


def _mutual_information(fixed_bins: np.ndarray, moving: np.ndarray, bins: int) -> np.ndarray:
    """Joint-histogram mutual information of fixed samples ``(N,)`` (bin indices) and each row of ``moving``
    ``(K, N)`` (intensities, NaN outside the scan); ``-inf`` where fewer than half the samples fall in the scan."""
    valid = np.isfinite(moving)
    finite = moving[valid]
    low, high = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    moving_bins = _to_bins(np.nan_to_num(moving, nan=low), low, high, bins)
    rows = np.broadcast_to(np.arange(moving.shape[0])[:, None], moving.shape)
    index = (rows * bins + fixed_bins[None, :]) * bins + moving_bins
    joint = np.bincount(index[valid], minlength=moving.shape[0] * bins * bins).reshape(-1, bins, bins).astype(float)
    count = joint.sum(axis=(1, 2))
    p = joint / np.maximum(count, 1.0)[:, None, None]
    outer = p.sum(axis=2)[:, :, None] * p.sum(axis=1)[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        mi = np.where(p > 0, p * np.log(p / np.where(outer > 0, outer, 1.0)), 0.0).sum(axis=(1, 2))
    return np.where(count >= 0.5 * moving.shape[1], mi, -np.inf)


def _initial_similarity(template: _Template, moving, rigid, threads: int | None):
    """The best start: a grid of similarity transforms scored at 8 mm, the best few refined there, the best kept.

    The grid (:data:`_SEARCH_STEPS`, :data:`_SEARCH_SCALES`: 2025 starts around the moments initialisation) is
    scored in one vectorised pass (joint-histogram mutual information of the template's 8 mm brain-mask samples
    and the scan, trilinear). A skull-on head at 8 mm looks like a brain 15% larger, so the grid's best start can be
    a false match; refining the best few (SimpleITK, Mattes MI) and keeping the best refined one finds the true
    match (measured on both shared T1s moved by known transforms).
    """
    import SimpleITK as sitk

    coarse_moving = _coarse(moving, _COARSE_SHRINK // 2)  # 4 mm voxels, smoothed like the 8 mm template
    moving_array = sitk.GetArrayFromImage(coarse_moving).astype(np.float32)  # (Z, Y, X)
    voxel_from_world = np.linalg.inv(_sitk_affine(coarse_moving))
    center, translation = np.asarray(rigid.GetCenter()), np.asarray(rigid.GetTranslation())
    offsets = [np.arange(-n, n + 1) * step for n, step in zip(_SEARCH_STEPS, _SEARCH_SCALES)]
    grid = np.stack(np.meshgrid(*offsets, indexing="ij"), axis=-1).reshape(-1, 7)
    positions = grid + np.concatenate([np.zeros(3), translation, [1.0]])
    transform = sitk.Similarity3DTransform()
    transform.SetCenter(center.tolist())
    matrices = []
    for position in positions:
        transform.SetParameters(position.tolist())
        matrices.append(_matrix4(transform))
    matrices = voxel_from_world @ np.stack(matrices)  # (K, 4, 4): MNI world -> scan voxel (x, y, z)
    scores = np.empty(len(positions))
    for first in range(0, len(positions), _SEARCH_BATCH):
        batch = matrices[first : first + _SEARCH_BATCH]
        voxel = batch[:, :3, :3] @ template.coarse_points[:3] + batch[:, :3, 3:]  # (k, 3, N)
        coords = voxel[:, ::-1].transpose(1, 0, 2).reshape(3, -1)  # (z, y, x) array order
        values = ndimage.map_coordinates(moving_array, coords, order=1, mode="constant", cval=np.nan)
        scores[first : first + _SEARCH_BATCH] = _mutual_information(
            template.coarse_bins, values.reshape(len(batch), -1), _SEARCH_BINS
        )
    best = None
    for index in np.argsort(-scores)[:_SEARCH_REFINED]:
        candidate = sitk.Similarity3DTransform()
        candidate.SetCenter(center.tolist())
        candidate.SetParameters(positions[index].tolist())
        refine = _registration_method(template, None, threads)
        refine.SetOptimizerAsRegularStepGradientDescent(4.0, 1e-2, _MAX_ITERATIONS, relaxationFactor=0.6)
        refine.SetOptimizerScalesFromPhysicalShift()
        refine.SetInitialTransform(candidate, inPlace=True)
        refine.Execute(template.coarse, coarse_moving)
        if best is None or refine.GetMetricValue() < best[0]:
            best = (refine.GetMetricValue(), candidate)
    return best[1]


def _local_ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray, window: int = _LNCC_WINDOW) -> float:
    """Mean over ``mask`` of the NCC of ``a`` and ``b`` in ``window``-voxel cubes (0 where either is flat)."""

    def box(x: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(x, window, mode="constant")

    mean_a, mean_b = box(a), box(b)
    var_a = np.maximum(box(a * a) - mean_a**2, 0.0)
    var_b = np.maximum(box(b * b) - mean_b**2, 0.0)
    cov = box(a * b) - mean_a * mean_b
    floor_a, floor_b = 1e-6 * float(a[mask].var()) + 1e-12, 1e-6 * float(b[mask].var()) + 1e-12
    ok = (var_a > floor_a) & (var_b > floor_b)
    ncc = np.where(ok, cov / np.sqrt(np.where(ok, var_a * var_b, 1.0)), 0.0)
    return float(np.clip(ncc[mask], -1.0, 1.0).mean()) if mask.any() else 0.0


def _box_mask(template: _Template, centers: Sequence[Sequence[float]], size: Sequence[float]) -> np.ndarray:
    """The voxels of the 2 mm grid (Z, Y, X) inside the world boxes."""
    world = template.grid_world[:3]
    inside = np.zeros(world.shape[1], dtype=bool)
    half = np.asarray(size, dtype=np.float64)[:, None] / 2.0
    for center in centers:
        inside |= np.all(np.abs(world - np.asarray(center, dtype=np.float64)[:, None]) <= half, axis=0)
    return inside.reshape(template.mask.shape)


def _evaluate(
    template: _Template,
    moving,
    subject_from_mni: np.ndarray,
    fov_shape: Sequence[int],
    fov_affine: np.ndarray,
    boxes: tuple[Sequence[Sequence[float]], Sequence[float]],
) -> tuple[float, float]:
    """Quality (mean local NCC in the brain mask, where the scan has data) and hippocampal-box coverage."""
    import SimpleITK as sitk

    transform = sitk.AffineTransform(3)
    transform.SetMatrix(subject_from_mni[:3, :3].ravel().tolist())
    transform.SetTranslation(subject_from_mni[:3, 3].tolist())
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, template.fixed, transform, sitk.sitkLinear, 0.0))
    voxel = np.linalg.solve(fov_affine, subject_from_mni @ template.grid_world)[:3]
    shape = np.asarray(fov_shape, dtype=np.float64)[:, None]
    covered = np.all((voxel >= -0.5) & (voxel <= shape - 0.5), axis=0).reshape(template.mask.shape)
    boxes_mask = _box_mask(template, *boxes)
    coverage = float(covered[boxes_mask].mean()) if boxes_mask.any() else 0.0
    inside = template.mask & ndimage.binary_erosion(covered, iterations=_LNCC_WINDOW // 2)
    if inside.sum() < 0.05 * template.mask.sum():
        return 0.0, coverage
    return _local_ncc(warped.astype(np.float64), template.fixed_array, inside), coverage


def register_to_template(
    array: np.ndarray,
    affine: np.ndarray,
    template: str | None = None,
    brain_mask: str | None = None,
    template_icv_mm3: float | None = None,
    num_threads: int | None = None,
    box_size: Sequence[float] = DEFAULT_BOX_SIZE,
    box_centers: Sequence[Sequence[float]] = (DEFAULT_LEFT_CENTER, DEFAULT_RIGHT_CENTER),
    identity: bool = False,
) -> RegistrationResult:
    """Register a whole-brain T1 affinely to the template (see the module docstring for the method).

    Args:
        array: the scan, ``(X, Y, Z)``, any intensity scale.
        affine: its 4x4 voxel-to-world matrix (RAS mm), any orientation and spacing.
        template, brain_mask: see :func:`load_template`.
        template_icv_mm3: the template's intracranial volume for ``etiv_mm3`` (default: its brain-mask volume).
        num_threads: SimpleITK threads (default: SimpleITK's global default).
        box_size, box_centers: the hippocampal boxes (MNI mm) whose coverage by the scan is measured.
        identity: do not register; evaluate the scan as it lies (already in MNI space).

    Returns:
        a :class:`RegistrationResult`; nothing is checked here (see :class:`RegisterToTemplate`).

    Raises:
        RuntimeError: SimpleITK failed (e.g. too few samples inside the scan).
    """
    start = time.perf_counter()
    tpl = load_template(template, brain_mask)
    array = np.nan_to_num(np.asarray(array, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    affine = np.asarray(affine, dtype=np.float64)
    moving = _downsample(_to_sitk(array, affine), _REG_SPACING_MM)
    boxes = (box_centers, box_size)
    dof = 0
    if identity:
        subject_from_mni = np.eye(4)
        quality, coverage = _evaluate(tpl, moving, subject_from_mni, array.shape[:3], affine, boxes)
    else:
        similarity, affine_fit = _register(tpl, moving, num_threads)
        # a 12-dof fit of a skull-on head can drift (shear, scale) where the 7-dof one holds: keep the better
        candidates = [(12, affine_fit), (7, similarity)]
        scored = [(dof, m, *_evaluate(tpl, moving, m, array.shape[:3], affine, boxes)) for dof, m in candidates]
        dof, subject_from_mni, quality, coverage = scored[0]
        if scored[1][2] > quality + _AFFINE_TOLERANCE:
            logger.warning(
                "affine registration quality %.3f below the similarity's %.3f: keeping the similarity (7 dof)",
                quality, scored[1][2],
            )
            dof, subject_from_mni, quality, coverage = scored[1]
    mni_from_subject = np.linalg.inv(subject_from_mni)
    scale = float("nan") if identity else abs(float(np.linalg.det(mni_from_subject[:3, :3])))
    icv = tpl.icv_mm3 if template_icv_mm3 is None else float(template_icv_mm3)
    return RegistrationResult(
        mni_from_subject=mni_from_subject,
        quality=quality,
        etiv_scale=scale,
        etiv_mm3=icv / scale,
        box_coverage=coverage,
        seconds=time.perf_counter() - start,
        registered=not identity,
        dof=dof,
    )


def resample_affine(
    img: torch.Tensor, out_to_in: np.ndarray, out_shape: Sequence[int], mode: str = "bilinear"
) -> torch.Tensor:
    """Resample a channel-first volume through a voxel map (SimpleITK, multi-threaded), zero outside; plain tensor out.

    Args:
        img: ``(C, X, Y, Z)`` input.
        out_to_in: 4x4 matrix, output voxel index -> input voxel index.
        out_shape: output spatial shape ``(X', Y', Z')``.
        mode: ``"bilinear"`` (trilinear) or ``"nearest"`` (keeps label values exactly).

    Returns:
        ``(C, X', Y', Z')`` float32.
    """
    import SimpleITK as sitk

    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"resample_affine: mode must be 'bilinear' or 'nearest', got {mode!r}.")
    src = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img).detach().cpu()
    if src.ndim != 4:
        raise ValueError(f"resample_affine: expected a (C, X, Y, Z) volume, got shape {tuple(src.shape)}.")
    out_to_in = np.asarray(out_to_in, dtype=np.float64)
    transform = sitk.AffineTransform(3)  # voxel indices as physical points: unit spacing, zero origin
    transform.SetMatrix(out_to_in[:3, :3].ravel().tolist())
    transform.SetTranslation(out_to_in[:3, 3].tolist())
    interpolator = sitk.sitkLinear if mode == "bilinear" else sitk.sitkNearestNeighbor
    size = [int(s) for s in out_shape]
    channels = []
    for channel in src.numpy().astype(np.float32, copy=False):
        image = sitk.GetImageFromArray(np.ascontiguousarray(channel.transpose(2, 1, 0)))
        grid = ((0.0,) * 3, (1.0,) * 3, np.eye(3).ravel().tolist())  # origin, spacing, directions
        out = sitk.Resample(image, size, transform, interpolator, *grid, 0.0, sitk.sitkFloat32)
        channels.append(sitk.GetArrayFromImage(out).transpose(2, 1, 0))
    return torch.from_numpy(np.ascontiguousarray(np.stack(channels)))



def brain_mask_on_grid(
    affine: np.ndarray, shape: Sequence[int], mni_from_subject: np.ndarray, template: str | None = None
) -> np.ndarray:
    """The template's brain (its nonzero voxels) mapped onto a scan's grid through a registration.

    Args:
        affine: the scan's 4x4 voxel-to-world matrix (mm).
        shape: the scan's spatial shape ``(X, Y, Z)``.
        mni_from_subject: 4x4, subject world -> MNI world (:attr:`RegistrationResult.mni_from_subject`).
        template: the template file (default nilearn's MNI152).

    Returns:
        ``(X, Y, Z)`` bool, e.g. to outline where the registration put the template's brain (QC pictures).
    """
    tpl = load_template(template)
    out_to_in = np.linalg.inv(tpl.affine) @ np.asarray(mni_from_subject, dtype=np.float64) @ np.asarray(affine)
    brain = torch.as_tensor(tpl.array > 0, dtype=torch.float32)[None]
    return resample_affine(brain, out_to_in, shape, mode="nearest")[0].numpy() > 0.5

_AXES = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


def known_transform(
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    shift_mm: Sequence[float] = (0.0, 0.0, 0.0),
    scale: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """A 4x4 MNI world -> subject world move for :func:`simulate_acquisition`: scale, then rotate (x, y, z Euler
    angles, degrees), then shift (mm)."""
    from scipy.spatial.transform import Rotation

    known = np.eye(4)
    known[:3, :3] = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix() @ np.diag(scale)
    known[:3, 3] = shift_mm
    return known


def simulate_acquisition(
    known: np.ndarray,
    axcodes: str = "RAS",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    fov_z: float | None = None,
    gain: float = 1.0,
    offset: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 template as a scanner would see it after the known move ``known`` (4x4, MNI -> subject world, mm).

    The grid has ``axcodes`` and ``spacing`` (mm) and spans the moved brain with a 10 mm margin, optionally cut to
    its top ``fov_z`` mm; intensities are ``gain * template + offset``. For validating the registration (tests,
    ``benchmarks/bench_registration.py``): the true answer is ``known``.

    Returns:
        ``(array (X, Y, Z), affine (4, 4))``.
    """
    tpl = load_template()
    linear = np.zeros((3, 3))
    for axis, code in enumerate(axcodes):
        world, sign = _AXES[code]
        linear[world, axis] = sign * spacing[axis]
    brain = np.argwhere(tpl.array > 0)
    lo, hi = brain.min(axis=0), brain.max(axis=0)
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]).T
    world = (known @ tpl.affine @ corners)[:3]
    low, high = world.min(axis=1) - 10.0, world.max(axis=1) + 10.0
    if fov_z is not None:
        low[2] = high[2] - fov_z
    shape = np.ceil(np.abs(np.linalg.solve(linear, high - low))).astype(int) + 1
    affine = np.eye(4)
    affine[:3, :3] = linear
    for axis, code in enumerate(axcodes):
        world_axis, sign = _AXES[code]
        affine[world_axis, 3] = low[world_axis] if sign > 0 else high[world_axis]
    out_to_in = np.linalg.inv(tpl.affine) @ np.linalg.inv(known) @ affine
    moved = resample_affine(torch.as_tensor(tpl.array)[None], out_to_in, shape, mode="bilinear")[0].numpy()
    return moved * gain + offset, affine


def registration_warnings(result: RegistrationResult) -> list[str]:
    """What makes a registration (or an ``mni`` scan's alignment) doubtful: a quality below :data:`QUALITY_WARN`,
    hippocampal boxes less than :data:`FULL_BOX_COVERAGE` inside the field of view. Empty when nothing is."""
    warnings = []
    if result.box_coverage < FULL_BOX_COVERAGE:
        warnings.append(
            f"only {100 * result.box_coverage:.0f}% of the hippocampal boxes lie inside the field of view: "
            "the hippocampi may be cut"
        )
    if result.quality < QUALITY_WARN:
        if result.registered:
            problem, advice = "poor registration", "check the brain outline in the QC picture"
        else:
            problem, advice = "not aligned with the MNI152 template", "segment it with mode auto"
        warnings.append(f"{problem}: quality {result.quality:.2f} below {QUALITY_WARN:.2f}; {advice}")
    return warnings

class RegisterToTemplate(InvertibleTransform):
    """Register a whole-brain T1 ``(C, X, Y, Z)`` to the MNI152 template and resample it onto the template grid.

    Args:
        mode: one of :data:`REGISTRATION_MODES` (see the module docstring).
        min_quality: a registration whose quality (mean local NCC, [-1, 1]) is below this fails.
        scale_range: allowed ``etiv_scale`` (``|det|`` of subject -> MNI) as ``(low, high)``.
        min_box_coverage: the fraction of the hippocampal boxes that must lie in the scan's field of view.
        template: a NIfTI T1 template in MNI space (default nilearn's MNI152, 1 mm); the output grid is its grid.
        brain_mask: its brain mask (default nilearn's MNI152 brain mask).
        template_icv_mm3: the template's intracranial volume, mm³ (default its brain-mask volume).
        num_threads: SimpleITK threads (default SimpleITK's global default).
        box_size, left_center, right_center: the hippocampal boxes (MNI mm), as in
            :class:`~hippogan.transforms.roi.HippocampalROICrop`, for the coverage check.

    Input: a channel-first MetaTensor ``(C, X, Y, Z)`` (channel 0 drives the registration), any orientation,
    spacing and intensity scale. Output: registered, ``(C, *template_shape)`` (197x233x189 for the default),
    affine = the template's (1 mm, RAS, MNI mm); passed through, the input unchanged. Either way a record is
    pushed (``extra_info``: ``registered``, ``mni_from_subject`` 4x4, ``orig_affine`` 4x4, ``mode``), which
    :meth:`inverse` pops. The last registration's :class:`RegistrationResult` is in ``last_result``
    (``None`` when passed through).
    """

    def __init__(
        self,
        mode: str = "auto",
        min_quality: float = MIN_QUALITY,
        scale_range: Sequence[float] = (0.5, 2.0),
        min_box_coverage: float = MIN_BOX_COVERAGE,
        template: str | None = None,
        brain_mask: str | None = None,
        template_icv_mm3: float | None = None,
        num_threads: int | None = None,
        box_size: Sequence[float] = DEFAULT_BOX_SIZE,
        left_center: Sequence[float] = DEFAULT_LEFT_CENTER,
        right_center: Sequence[float] = DEFAULT_RIGHT_CENTER,
    ) -> None:
        if mode not in REGISTRATION_MODES:
            raise ValueError(f"RegisterToTemplate: unknown mode {mode!r}; expected one of {REGISTRATION_MODES}.")
        if not -1.0 <= float(min_quality) <= 1.0:
            raise ValueError(f"RegisterToTemplate: min_quality must lie in [-1, 1], got {min_quality!r}.")
        scale_range = tuple(float(s) for s in scale_range)
        if len(scale_range) != 2 or not 0 < scale_range[0] < scale_range[1]:
            raise ValueError(
                f"RegisterToTemplate: scale_range must be (low, high) with 0 < low < high, got {scale_range!r}."
            )
        if not 0.0 <= float(min_box_coverage) <= 1.0:
            raise ValueError(f"RegisterToTemplate: min_box_coverage must lie in [0, 1], got {min_box_coverage!r}.")
        if template_icv_mm3 is not None and float(template_icv_mm3) <= 0:
            raise ValueError(f"RegisterToTemplate: template_icv_mm3 must be positive, got {template_icv_mm3!r}.")
        if num_threads is not None and int(num_threads) < 1:
            raise ValueError(f"RegisterToTemplate: num_threads must be at least 1, got {num_threads!r}.")
        for name, value in (("box_size", box_size), ("left_center", left_center), ("right_center", right_center)):
            if len(tuple(value)) != 3:
                raise ValueError(f"RegisterToTemplate: {name} must be 3 numbers (RAS x, y, z, mm), got {value!r}.")
        self.mode = mode
        self.min_quality = float(min_quality)
        self.scale_range = scale_range
        self.min_box_coverage = float(min_box_coverage)
        self.template = template
        self.brain_mask = brain_mask
        self.template_icv_mm3 = None if template_icv_mm3 is None else float(template_icv_mm3)
        self.num_threads = num_threads
        self.box_size = tuple(float(v) for v in box_size)
        self.box_centers = (tuple(float(v) for v in left_center), tuple(float(v) for v in right_center))
        self.last_result: RegistrationResult | None = None

    def resolve_mode(self, img: torch.Tensor) -> str:
        """The mode applied to ``img``: ``mode`` itself, or for ``"auto"`` ``"register"`` (field of view > 100 mm
        along any axis) or ``"precropped"``."""
        if self.mode != "auto":
            return self.mode
        return "register" if float(field_of_view_mm(img).max()) > WHOLE_BRAIN_MIN_EXTENT_MM else "precropped"

    def register(self, img: torch.Tensor) -> RegistrationResult | None:
        """Register ``img`` (mode ``register``), measure it as it lies (``mni``) or nothing (``precropped``).

        Raises:
            ValueError: ``img`` is not a ``(C, X, Y, Z)`` MetaTensor, or the registration failed or is implausible
                (the message names the file and the reason).
        """
        if img.ndim != 4:
            raise ValueError(f"RegisterToTemplate: expected a (C, X, Y, Z) volume, got shape {tuple(img.shape)}.")
        mode = self.resolve_mode(img)
        if mode == "precropped":
            return None
        name = source_name(img, "the input")
        if not isinstance(img, MetaTensor):
            raise ValueError(f"RegisterToTemplate: mode {mode!r} needs a MetaTensor (its affine places the scan).")
        array = np.asarray(img[0].detach().cpu().numpy(), dtype=np.float32)
        affine = np.asarray(img.affine.detach().cpu().numpy(), dtype=np.float64)
        if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
            raise ValueError(f"RegisterToTemplate: {name} has a degenerate affine {affine.tolist()}.")
        try:
            result = register_to_template(
                array,
                affine,
                template=self.template,
                brain_mask=self.brain_mask,
                template_icv_mm3=self.template_icv_mm3,
                num_threads=self.num_threads,
                box_size=self.box_size,
                box_centers=self.box_centers,
                identity=mode == "mni",
            )
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise ValueError(f"registration to the MNI152 template failed for {name}: {reason}") from error
        logger.info(
            "%s: registration quality %.3f, etiv_scale %.3f, eTIV %.0f mm³, box coverage %.2f, %.1f s",
            name, result.quality, result.etiv_scale, result.etiv_mm3, result.box_coverage, result.seconds,
        )
        if mode == "register":
            self._check(result, name)
        for warning in registration_warnings(result):
            logger.warning("%s: %s", name, warning)
        return result

    def _check(self, result: RegistrationResult, name: str) -> None:
        problems = []
        if result.quality < self.min_quality:
            problems.append(
                f"quality {result.quality:.2f} (local NCC with the template) below {self.min_quality:.2f}: "
                "not a T1 whole brain, or the registration did not converge"
            )
        low, high = self.scale_range
        if not low <= result.etiv_scale <= high:
            problems.append(f"implausible scaling: determinant {result.etiv_scale:.2f} outside [{low}, {high}]")
        if result.box_coverage < self.min_box_coverage:
            problems.append(
                f"only {100 * result.box_coverage:.0f}% of the hippocampal boxes lie inside the scan's field of view "
                f"(at least {100 * self.min_box_coverage:.0f}% needed): the scan does not cover the hippocampi"
            )
        if problems:
            raise ValueError(f"registration to the MNI152 template failed for {name}: " + "; ".join(problems) + ".")

    def __call__(self, img: torch.Tensor, interp_mode: str = "bilinear") -> torch.Tensor:
        """Register ``img`` and resample it onto the template grid (mode ``register``), or pass it through.

        Args:
            img: ``(C, X, Y, Z)`` MetaTensor.
            interp_mode: ``"bilinear"`` (images) or ``"nearest"`` (label maps).

        Raises:
            ValueError: see :meth:`register`.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        self.last_result = self.register(img)
        return self.apply(img, self.last_result, interp_mode)

    def apply(
        self, img: torch.Tensor, result: RegistrationResult | None, interp_mode: str = "bilinear"
    ) -> torch.Tensor:
        """Resample ``img`` onto the template grid through ``result`` (found on it or on its image), and record it.

        ``result`` ``None`` or not ``registered`` (modes ``precropped``, ``mni``): ``img`` passes through unchanged,
        with a no-op record, so that :meth:`inverse` and ``Invertd`` work the same in every mode.
        """
        if interp_mode not in ("bilinear", "nearest"):
            raise ValueError(f"RegisterToTemplate: interp_mode must be 'bilinear' or 'nearest', got {interp_mode!r}.")
        img = convert_to_tensor(img, track_meta=get_track_meta())
        registered = result is not None and result.registered
        orig_affine = img.affine.detach().cpu().numpy() if isinstance(img, MetaTensor) else np.eye(4)
        extra = {
            "registered": bool(registered),
            "mni_from_subject": (result.mni_from_subject if registered else np.eye(4)).tolist(),
            "orig_affine": np.asarray(orig_affine, dtype=np.float64).tolist(),
            "mode": interp_mode,  # the key Invertd(nearest_interp=True) rewrites
        }
        orig_size = tuple(int(s) for s in img.shape[1:])
        if not registered:
            return self.push_transform(img, orig_size=orig_size, extra_info=extra)
        tpl = load_template(self.template, self.brain_mask)
        out_to_in = np.linalg.inv(orig_affine) @ np.linalg.inv(result.mni_from_subject) @ tpl.affine
        data = resample_affine(img, out_to_in, tpl.array.shape, mode=interp_mode)
        if not isinstance(img, MetaTensor):
            return data
        meta = dict(img.meta)
        meta["affine"] = torch.as_tensor(tpl.affine, dtype=torch.float64)
        out = MetaTensor(data, meta=meta, applied_operations=list(img.applied_operations))
        return self.push_transform(out, orig_size=orig_size, extra_info=extra)

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Map a ``(C, *template_shape)`` map back onto the input's grid (its shape and affine), zero outside.

        Uses the recorded interpolation (``Invertd(..., nearest_interp=True)`` makes it nearest); a pass-through
        record returns ``data`` as it is.
        """
        transform = self.pop_transform(data)
        info, orig_size = transform[TraceKeys.EXTRA_INFO], transform[TraceKeys.ORIG_SIZE]
        if not info["registered"]:
            return data
        orig_affine = np.asarray(info["orig_affine"], dtype=np.float64)
        mni_from_subject = np.asarray(info["mni_from_subject"], dtype=np.float64)
        if isinstance(data, MetaTensor):
            data_affine = data.affine.detach().cpu().numpy().astype(np.float64)
        else:
            data_affine = load_template(self.template, self.brain_mask).affine
        mode = info.get("mode", "nearest")
        mode = mode if mode in ("bilinear", "nearest") else "nearest"
        out_to_in = np.linalg.inv(data_affine) @ mni_from_subject @ orig_affine
        out = resample_affine(data, out_to_in, orig_size, mode=mode)
        if not isinstance(data, MetaTensor):
            return out
        meta = dict(data.meta)
        meta["affine"] = torch.as_tensor(orig_affine, dtype=torch.float64)
        return MetaTensor(out, meta=meta, applied_operations=list(data.applied_operations))


class RegisterToTemplated(MapTransform, InvertibleTransform):
    """Dictionary wrapper of :class:`RegisterToTemplate`: the first key is registered, every key resampled alike.

    Place it right after ``EnsureChannelFirstd`` (before ``Orientationd`` and ``Spacingd``, which it makes no-ops
    for a registered scan).

    Args:
        keys: keys of ``(C, X, Y, Z)`` volumes; the first present one (the image) drives the registration.
        mode, min_quality, scale_range, min_box_coverage, template, brain_mask, template_icv_mm3, num_threads,
            box_size, left_center, right_center: as in :class:`RegisterToTemplate`.
        interp_mode: interpolation per key, ``"bilinear"`` or ``"nearest"`` (default bilinear for the first key,
            nearest for the others, e.g. a label).
        quality_key: receives the registration quality (float in [-1, 1]; NaN for a crop).
        etiv_scale_key: receives ``etiv_scale`` (NaN when not registered).
        etiv_key: receives ``etiv_mm3`` (NaN when not registered).
        mni_key: receives ``mni_from_subject`` (4x4 float64, subject world -> MNI mm; the identity in mode
            ``mni``; all NaN for a crop, so that samples still collate), e.g. for drawing the template's brain outline on the scan
            (:func:`brain_mask_on_grid`).
        warnings_key: a quality below :data:`QUALITY_WARN` or a box coverage below :data:`FULL_BOX_COVERAGE` appends a
            warning here (the list
            :class:`~hippogan.transforms.sanity.CheckScand` keeps; every side of the scan is then flagged).
        allow_missing_keys: do not raise when a key is absent.

    Raises:
        ValueError (on call): a failed or implausible registration, naming the file and the reason.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable = IMAGE,
        mode: str = "auto",
        min_quality: float = MIN_QUALITY,
        scale_range: Sequence[float] = (0.5, 2.0),
        min_box_coverage: float = MIN_BOX_COVERAGE,
        template: str | None = None,
        brain_mask: str | None = None,
        template_icv_mm3: float | None = None,
        num_threads: int | None = None,
        box_size: Sequence[float] = DEFAULT_BOX_SIZE,
        left_center: Sequence[float] = DEFAULT_LEFT_CENTER,
        right_center: Sequence[float] = DEFAULT_RIGHT_CENTER,
        interp_mode: Sequence[str] | str | None = None,
        quality_key: str = REGISTRATION_QUALITY,
        etiv_scale_key: str = ETIV_SCALE,
        etiv_key: str = ETIV_MM3,
        mni_key: str = MNI_FROM_SUBJECT,
        warnings_key: str = SCAN_WARNINGS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.registrar = RegisterToTemplate(
            mode, min_quality, scale_range, min_box_coverage, template, brain_mask, template_icv_mm3, num_threads,
            box_size, left_center, right_center,
        )
        if interp_mode is None:
            interp_mode = ["bilinear"] + ["nearest"] * (len(self.keys) - 1)
        self.interp_mode = ensure_tuple_rep(interp_mode, len(self.keys))
        for m in self.interp_mode:
            if m not in ("bilinear", "nearest"):
                raise ValueError(f"RegisterToTemplated: interp_mode must be 'bilinear' or 'nearest', got {m!r}.")
        self.quality_key, self.etiv_scale_key, self.etiv_key = quality_key, etiv_scale_key, etiv_key
        self.mni_key, self.warnings_key = mni_key, warnings_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Register the first key's volume, resample every key alike, write quality and eTIV keys."""
        d = dict(data)
        result, first = None, True
        for key, interp in self.key_iterator(d, self.interp_mode):
            if first:
                result = self.registrar.register(d[key])
                first = False
            d[key] = self.registrar.apply(d[key], result, interp)
        nan = float("nan")
        d[self.quality_key] = nan if result is None else float(result.quality)
        d[self.etiv_scale_key] = nan if result is None else float(result.etiv_scale)
        d[self.etiv_key] = nan if result is None else float(result.etiv_mm3)
        d[self.mni_key] = np.full((4, 4), nan) if result is None else np.asarray(result.mni_from_subject, np.float64)
        if result is not None:
            d[self.warnings_key] = [*d.get(self.warnings_key, []), *registration_warnings(result)]
        self.registrar.last_result = result
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Map each key's volume back onto its input grid."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.registrar.inverse(d[key])
        return d


RegisterToTemplateD = RegisterToTemplateDict = RegisterToTemplated
