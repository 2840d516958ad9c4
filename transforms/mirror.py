"""Left-right mirroring of one hemisphere's samples, so both hippocampi share one orientation; invertible."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.data import get_track_meta
from monai.transforms import Flip, InvertibleTransform, MapTransform
from monai.utils import TraceKeys, convert_to_tensor

from .keys import LEFT, RIGHT, SIDE

__all__ = ["MirrorSided", "MirrorSideD", "MirrorSideDict"]


class MirrorSided(MapTransform, InvertibleTransform):
    """Flip the samples of one side along x (the first spatial axis, RAS), leave the others as they are.

    With ``mirror_side="left"``, a left hippocampus ROI ``(C, X, Y, Z)`` is flipped along X and then looks
    like a right one; the affine is flipped with it, so world coordinates stay right. Every sample records
    whether it was flipped, so ``inverse`` (and ``Invertd``) undo exactly what was done.

    Args:
        keys: keys of the volumes to mirror (image and label together).
        mirror_side: the side to flip, ``"left"`` or ``"right"``.
        side_key: key holding the sample's side (set by ``HippocampalROICropd``).
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(
        self,
        keys: Sequence[Hashable] | Hashable,
        mirror_side: str = LEFT,
        side_key: str = SIDE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if mirror_side not in (LEFT, RIGHT):
            raise ValueError(f"MirrorSided: mirror_side must be {LEFT!r} or {RIGHT!r}, got {mirror_side!r}.")
        self.mirror_side = mirror_side
        self.side_key = side_key
        self.flipper = Flip(spatial_axis=0)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Flip each key along x when ``data[side_key]`` is ``mirror_side``; record the choice either way."""
        d = dict(data)
        flip = d.get(self.side_key) == self.mirror_side
        for key in self.key_iterator(d):
            if flip:
                with self.flipper.trace_transform(False):
                    d[key] = self.flipper(d[key])
            else:
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
            self.push_transform(d[key], extra_info={"flipped": flip})
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Flip back the keys that were flipped."""
        d = dict(data)
        for key in self.key_iterator(d):
            if self.pop_transform(d[key])[TraceKeys.EXTRA_INFO]["flipped"]:
                with self.flipper.trace_transform(False):
                    d[key] = self.flipper(d[key])
        return d


MirrorSideD = MirrorSideDict = MirrorSided
