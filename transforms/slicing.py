"""The sagittal 2D view of the 3D ROI, for the paper's 2D networks (64x64 planes (y, z), sliced along x).

Which to use where:

- **Inference**: :func:`sagittal_inferer` (MONAI's ``SliceInferer`` along the first spatial axis) runs a 2D
  network on every sagittal plane of a preprocessed ROI batch ``(B, C, X, Y, Z)`` and returns the 3D map
  ``(B, C_out, X, Y, Z)``, ready for ``Invertd`` (see :func:`hippogan.transforms.chains.get_postprocessing`).
- **Training**: keep the 3D ROI volumes in a ``CacheDataset`` (the deterministic pre-processing once per
  case); :class:`hippogan.pipeline.bundle_training.SagittalSliceDataset` serves their sagittal planes (every
  plane holding hippocampus plus a share of the empty ones). :func:`volume_to_sagittal` /
  :func:`sagittal_to_volume` reshape a batch of volumes to planes and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer

__all__ = ["as_plain_tensor", "sagittal_inferer", "volume_to_sagittal", "sagittal_to_volume"]


def sagittal_inferer(roi_size: Sequence[int] = (64, 64), sw_batch_size: int = 64, **kwargs: Any) -> SliceInferer:
    """Return MONAI's ``SliceInferer`` over sagittal planes: ``(B, C, X, Y, Z)`` in, ``(B, C_out, X, Y, Z)`` out.

    Args:
        roi_size: the 2D window (y, z), voxels; the ROI's own plane size (64x64) runs each plane whole.
        sw_batch_size: planes per network call.
        kwargs: other ``SliceInferer``/``SlidingWindowInferer`` arguments (``overlap``, ``mode``, ``device``...).
    """
    if len(tuple(roi_size)) != 2:
        raise ValueError(f"sagittal_inferer: roi_size must be 2 numbers (y, z), got {roi_size!r}.")
    return SliceInferer(roi_size=tuple(roi_size), sw_batch_size=sw_batch_size, spatial_dim=0, progress=False, **kwargs)


def as_plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a plain ``torch.Tensor`` (a MetaTensor's data without its metadata; arrays converted)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def volume_to_sagittal(volume: torch.Tensor) -> torch.Tensor:
    """Reshape ``(B, C, X, Y, Z)`` volumes to ``(B * X, C, Y, Z)`` sagittal planes (volume-major order)."""
    if volume.ndim != 5:
        raise ValueError(f"volume_to_sagittal: expected (B, C, X, Y, Z), got shape {tuple(volume.shape)}.")
    b, c, x, y, z = volume.shape
    return as_plain_tensor(volume).permute(0, 2, 1, 3, 4).reshape(b * x, c, y, z)


def sagittal_to_volume(planes: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Reshape ``(B * X, C, Y, Z)`` planes (as made by :func:`volume_to_sagittal`) back to ``(B, C, X, Y, Z)``."""
    if planes.ndim != 4 or batch_size < 1 or planes.shape[0] % batch_size:
        raise ValueError(
            f"sagittal_to_volume: expected (B * X, C, Y, Z) planes with B = {batch_size}, "
            f"got shape {tuple(planes.shape)}."
        )
    n, c, y, z = planes.shape
    return as_plain_tensor(planes).reshape(batch_size, n // batch_size, c, y, z).permute(0, 2, 1, 3, 4)
