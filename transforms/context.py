"""Neighbouring sagittal planes as extra image channels (2.5D input for the 2D networks)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from .keys import IMAGE

__all__ = ["SagittalContext", "SagittalContextd", "SagittalContextD", "SagittalContextDict"]


class SagittalContext(Transform):
    """Stack each sagittal plane with its ``context`` neighbours on either side as channels.

    ``(C, X, Y, Z)`` -> ``(C * (2 * context + 1), X, Y, Z)``, or a batch ``(B, C, X, Y, Z)`` ->
    ``(B, C * (2 * context + 1), X, Y, Z)`` (as a multi-view ensemble stacks its 2.5D members' input): channel
    block ``k`` holds the volume shifted by ``k - context`` planes along x (RAS left-right), zero beyond the
    volume, so a 2D network given the plane at ``x`` sees planes ``x - context .. x + context``. ``context=0``
    returns the input unchanged.

    It changes no geometry and records nothing: ``Invertd`` passes over it, and predictions (one set of
    channels per plane) invert exactly as without it.

    Args:
        context: neighbouring planes taken on each side (voxels, 1 mm on the ROI grid).
    """

    def __init__(self, context: int = 1) -> None:
        if int(context) != context or context < 0:
            raise ValueError(f"SagittalContext: context must be a non-negative integer, got {context!r}.")
        self.context = int(context)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """``([B,] C, X, Y, Z)`` in, ``([B,] C * (2 * context + 1), X, Y, Z)`` out (same type and metadata)."""
        if img.ndim not in (4, 5):
            raise ValueError(
                f"SagittalContext: expected a (C, X, Y, Z) volume or a batch of them, got shape {tuple(img.shape)}."
            )
        if self.context == 0:
            return img
        padded = torch.nn.functional.pad(img, (0, 0, 0, 0, self.context, self.context))
        x = img.shape[-3]
        return torch.cat([padded[..., k : k + x, :, :] for k in range(2 * self.context + 1)], dim=-4)


class SagittalContextd(MapTransform):
    """Dictionary version of :class:`SagittalContext` (applied to the image only, by default).

    Args:
        keys: keys of the volumes to stack (``"image"``).
        context: neighbouring planes on each side.
        allow_missing_keys: do not raise for absent keys.
    """

    def __init__(self, keys: KeysCollection = IMAGE, context: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.stacker = SagittalContext(context)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.stacker(d[key])
        return d


SagittalContextD = SagittalContextDict = SagittalContextd
