"""2D views of the 3D ROI for the paper's 2D networks: sagittal 64x64 planes (y, z) sliced along x, the paper's;
coronal (x, z) and axial (x, y) planes for multi-view models (:data:`VIEWS`).

Which to use where:

- **Inference**: :func:`plane_inferer` (MONAI's ``SliceInferer`` along the view's spatial axis) runs a 2D
  network on every plane of a preprocessed ROI batch ``(B, C, X, Y, Z)`` and returns the 3D map
  ``(B, C_out, X, Y, Z)``, ready for ``Invertd`` (see :func:`hippogan.transforms.chains.get_postprocessing`).
  A plane smaller than the window (the ROI's 48x64 coronal and axial planes) is zero-padded to it, centred
  (:func:`pad_plane` does the same in training), and the output cropped back.
- **Training**: keep the 3D ROI volumes in a ``CacheDataset`` (the deterministic pre-processing once per
  case); :class:`hippogan.pipeline.bundle_training.PlaneSliceDataset` serves their planes of one view (every
  plane holding hippocampus plus a share of the empty ones). :func:`volume_to_sagittal` /
  :func:`sagittal_to_volume` reshape a batch of volumes to sagittal planes and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer, SliceInferer

__all__ = [
    "VIEWS", "VOLUME_VIEW", "view_axis", "pad_plane", "plane_inferer", "ensemble_inferer", "as_plain_tensor",
    "volume_to_sagittal", "sagittal_to_volume",
]  # fmt: skip

VIEWS = {"sagittal": 0, "coronal": 1, "axial": 2}
"""The 2D views and the RAS spatial axis each one slices along (x, y, z of a ``(C, X, Y, Z)`` volume)."""

VOLUME_VIEW = "volume"
"""The "view" of a 3D network (``spatial_dims=3``): the whole ROI volume in one forward pass, no planes."""


def view_axis(view: str) -> int:
    """The spatial axis (0, 1 or 2) that ``view`` slices along; ValueError naming the views for another name."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}.")
    return VIEWS[view]


def pad_plane(plane: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``(C, H, W)`` planes to ``size`` (H', W') as MONAI's sliding window does: centred, the odd voxel last.

    Raises ValueError if the plane is larger than ``size``.
    """
    height, width = plane.shape[-2:]
    dh, dw = int(size[0]) - height, int(size[1]) - width
    if dh < 0 or dw < 0:
        raise ValueError(f"pad_plane: plane {height}x{width} is larger than the window {size[0]}x{size[1]}.")
    if dh == dw == 0:
        return plane
    return torch.nn.functional.pad(plane, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def plane_inferer(
    roi_size: Sequence[int] = (64, 64), sw_batch_size: int = 64, view: str = "sagittal", **kwargs: Any
) -> SliceInferer:
    """Return MONAI's ``SliceInferer`` over the planes of ``view``: ``(B, C, X, Y, Z)`` in, ``(B, C_out, X, Y, Z)`` out.

    Args:
        roi_size: the 2D window, voxels; planes smaller than it are zero-padded to it (centred) and the
            output cropped back, so the ROI's 64x64 sagittal and 48x64 coronal/axial planes each run whole.
        sw_batch_size: planes per network call.
        view: ``sagittal`` (planes (y, z), the paper's), ``coronal`` (x, z) or ``axial`` (x, y).
        kwargs: other ``SliceInferer``/``SlidingWindowInferer`` arguments (``overlap``, ``mode``, ``device``...).
    """
    if len(tuple(roi_size)) != 2:
        raise ValueError(f"plane_inferer: roi_size must be 2 numbers (the plane's window), got {roi_size!r}.")
    return SliceInferer(
        roi_size=tuple(roi_size), sw_batch_size=sw_batch_size, spatial_dim=view_axis(view), progress=False, **kwargs
    )


def ensemble_inferer(views: Sequence[str], sw_batch_size: int = 64, **kwargs: Any) -> Inferer:
    """The inferer of generators trained on ``views`` (one per generator, as the bundle's ``views``).

    One view: :func:`plane_inferer` over that view's planes (for one generator, or a 2D
    :class:`~hippogan.networks.ProbabilityEnsemble` of several). Several views, or :data:`VOLUME_VIEW` (3D
    generators): MONAI's ``SimpleInferer``, since a 3D network or a multi-view ``ProbabilityEnsemble(views=...)``
    takes the 3D ROI batch (and slices it per member).

    Args:
        views: ``sagittal``, ``coronal``, ``axial`` or ``volume``, one per generator.
        sw_batch_size, kwargs: :func:`plane_inferer`'s, for one view.
    """
    views = list(views)
    if not views:
        raise ValueError("ensemble_inferer: give the view of each generator, e.g. ['sagittal'].")
    if len(set(views)) > 1 or views[0] == VOLUME_VIEW:
        for view in views:
            if view != VOLUME_VIEW:
                view_axis(view)
        return SimpleInferer()
    return plane_inferer(sw_batch_size=sw_batch_size, view=views[0], **kwargs)


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
