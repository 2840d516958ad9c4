"""The sagittal 2D view of the 3D ROI, for the paper's 2D networks (64x64 planes (y, z), sliced along x).

Which to use where:

- **Inference**: :func:`sagittal_inferer` (MONAI's ``SliceInferer`` along the first spatial axis) runs a 2D
  network on every sagittal plane of a preprocessed ROI batch ``(B, C, X, Y, Z)`` and returns the 3D map
  ``(B, C_out, X, Y, Z)``, ready for ``Invertd`` (see :func:`hippogan.transforms.chains.get_postprocessing`).
- **Training**: keep the 3D ROI volumes in the dataset (``CacheDataset`` caches the deterministic
  pre-processing once per case) and turn each collated batch into 2D planes with :func:`sagittal_slices`,
  optionally keeping only the planes that hold hippocampus plus a share of empty ones.
  :func:`volume_to_sagittal` / :func:`sagittal_to_volume` are the underlying reshapes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer

from hippogan.transforms.keys import IMAGE, LABEL

__all__ = ["sagittal_inferer", "volume_to_sagittal", "sagittal_to_volume", "sagittal_slices"]


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


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def volume_to_sagittal(volume: torch.Tensor) -> torch.Tensor:
    """Reshape ``(B, C, X, Y, Z)`` volumes to ``(B * X, C, Y, Z)`` sagittal planes (volume-major order)."""
    if volume.ndim != 5:
        raise ValueError(f"volume_to_sagittal: expected (B, C, X, Y, Z), got shape {tuple(volume.shape)}.")
    b, c, x, y, z = volume.shape
    return _plain(volume).permute(0, 2, 1, 3, 4).reshape(b * x, c, y, z)


def sagittal_to_volume(planes: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Reshape ``(B * X, C, Y, Z)`` planes (as made by :func:`volume_to_sagittal`) back to ``(B, C, X, Y, Z)``."""
    if planes.ndim != 4 or batch_size < 1 or planes.shape[0] % batch_size:
        raise ValueError(
            f"sagittal_to_volume: expected (B * X, C, Y, Z) planes with B = {batch_size}, "
            f"got shape {tuple(planes.shape)}."
        )
    n, c, y, z = planes.shape
    return _plain(planes).reshape(batch_size, n // batch_size, c, y, z).permute(0, 2, 1, 3, 4)


def sagittal_slices(
    batch: Mapping[Hashable, torch.Tensor] | Sequence[Mapping[Hashable, torch.Tensor]],
    keys: Sequence[Hashable] = (IMAGE, LABEL),
    label_key: Hashable | None = LABEL,
    empty_fraction: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[Hashable, torch.Tensor]:
    """Turn preprocessed 3D ROI volumes into 2D sagittal training planes.

    Args:
        batch: a collated batch (each key ``(B, C, X, Y, Z)``) or a list of samples (each key ``(C, X, Y, Z)``).
        keys: the keys to slice, in step (same planes for image and label).
        label_key: the label used to select planes; ``None`` with ``empty_fraction=None`` keeps every plane.
        empty_fraction: ``None`` keeps every plane; otherwise keep every plane holding label (> 0) and this
            share (in ``[0, 1]``) of the empty ones, drawn at random with ``generator``.
        generator: random generator for the empty-plane draw (reproducible training).

    Returns:
        ``{key: (N, C, Y, Z)}`` plain tensors, planes in volume-major, x-minor order.
    """
    if not isinstance(batch, Mapping):
        batch = {key: torch.stack([_plain(sample[key]) for sample in batch]) for key in keys}
    missing = [key for key in keys if key not in batch]
    if missing:
        raise ValueError(f"sagittal_slices: keys {missing} not in the batch; it has {list(batch)}.")
    planes = {key: volume_to_sagittal(batch[key]) for key in keys}
    if empty_fraction is None:
        return planes
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"sagittal_slices: empty_fraction must be in [0, 1], got {empty_fraction}.")
    if label_key not in planes:
        raise ValueError(f"sagittal_slices: label_key {label_key!r} must be one of keys {list(keys)} to select planes.")
    labelled = planes[label_key].flatten(1).gt(0).any(dim=1)
    empty = torch.nonzero(~labelled).flatten()
    n_keep = int(round(empty_fraction * len(empty)))
    kept = empty[torch.randperm(len(empty), generator=generator)[:n_keep]]
    index = torch.sort(torch.cat([torch.nonzero(labelled).flatten(), kept])).values
    return {key: value[index] for key, value in planes.items()}
