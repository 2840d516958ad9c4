"""Input sanity checks before the network: a scan the tool cannot trust fails with a reason, never passes as ``ok``."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .loading import NIFTI_SUFFIXES, source_name

__all__ = ["SCAN_WARNINGS", "CheckScand", "CheckScanD", "CheckScanDict", "check_scan"]

logger = logging.getLogger(__name__)

SCAN_WARNINGS = "scan_warnings"
"""Key of the list of warnings (strings) :class:`CheckScand` attaches to a sample; they become QC flags."""
MAX_ABS_INTENSITY = 1e20
"""Largest plausible magnitude of an MR intensity; beyond it the file is taken as corrupt."""
_AFFINE_ATOL_MM = 1e-3


def _singular(affine: np.ndarray) -> bool:
    return not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-6


def _nifti_header_warnings(path: str) -> list[str]:
    """Check a NIfTI file's own header, a second (header-only) read: MONAI's reader puts an identity in place of a
    singular affine and keeps only the sform, so the loaded image cannot tell either.

    Raises ``ValueError`` for a singular affine; warns when the qform and sform are both set and disagree
    (nibabel and MONAI use the sform).
    """
    import nibabel as nib

    if not path.lower().endswith(NIFTI_SUFFIXES):
        return []
    image = nib.load(path)
    if _singular(np.asarray(image.affine, dtype=np.float64)):
        raise ValueError(f"{path}: the voxel-to-world affine is singular or not finite; the header is broken.")
    qform, qcode = image.header.get_qform(coded=True)
    sform, scode = image.header.get_sform(coded=True)
    if qform is None or sform is None or not qcode or not scode or np.allclose(qform, sform, atol=_AFFINE_ATOL_MM):
        return []
    shift = float(np.abs(qform[:3, 3] - sform[:3, 3]).max())
    return [f"qform and sform disagree (up to {shift:.1f} mm in the origin); the sform is used, as nibabel does"]


def check_scan(img: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Check one channel-first scan ``(C, X, Y, Z)`` and shift its intensities so that its minimum is 0.

    Raises ``ValueError`` naming the file for: more than one volume (4D series) or a 5D image, non-finite
    voxels, intensities beyond :data:`MAX_ABS_INTENSITY`, a constant (or all-zero) image, and a singular or
    non-finite affine. Shifting the minimum to 0 makes an offset copy of a scan (e.g. all values minus 5,000)
    give the same result as the scan itself; the later percentile scaling makes a scaled copy give the same.

    Returns:
        The shifted image (same type and metadata) and the warnings (qform/sform disagreement).
    """
    name = source_name(img)
    data = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
    if data.ndim != 4:
        raise ValueError(f"{name}: expected one 3D volume, got an image of {data.ndim - 1} spatial dimensions "
                         f"(shape {tuple(data.shape[1:])} after the channel axis).")  # fmt: skip
    if data.shape[0] != 1:
        raise ValueError(f"{name}: a 4D image holding {data.shape[0]} volumes; give one 3D T1 volume.")
    finite = torch.isfinite(data)
    if not bool(finite.all()):
        raise ValueError(f"{name}: {int((~finite).sum())} voxels are NaN or infinite; the file is corrupt.")
    low, high = float(data.min()), float(data.max())
    if max(abs(low), abs(high)) > MAX_ABS_INTENSITY:
        raise ValueError(f"{name}: intensities reach {max(abs(low), abs(high)):.3g}; not a plausible MR image.")
    if high == low:
        raise ValueError(f"{name}: every voxel is {low:g} (an empty or constant image); nothing to segment.")
    warnings = []
    if isinstance(img, MetaTensor):
        if _singular(img.affine.double().numpy()):
            raise ValueError(f"{name}: the voxel-to-world affine is singular or not finite; the header is broken.")
        warnings += _nifti_header_warnings(source_name(img, ""))
    return img - low, warnings


class CheckScand(MapTransform):
    """Dictionary version of :func:`check_scan`, right after ``EnsureChannelFirstd`` (before any resampling).

    Args:
        keys: keys of the channel-first scans ``(1, X, Y, Z)``.
        warnings_key: key receiving the list of warnings (appended to what is there).
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, warnings_key: str = SCAN_WARNINGS, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.warnings_key = warnings_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        warnings = list(d.get(self.warnings_key, []))
        for key in self.key_iterator(d):
            d[key], found = check_scan(d[key])
            warnings += found
        for warning in warnings:
            logger.warning("%s", warning)
        d[self.warnings_key] = warnings
        return d


CheckScanD = CheckScanDict = CheckScand
