"""Several segmentation networks as one: the mean of their class probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hippogan.transforms.slicing import as_plain_tensor, plane_inferer

__all__ = ["ProbabilityEnsemble"]


class ProbabilityEnsemble(torch.nn.Module):
    """Average the softmax probabilities of networks that map one input to the same classes.

    Args:
        members: networks ``(B, Cin, *S) -> (B, C, *S)`` logits, ``C >= 2`` classes (e.g. generators trained with
            different seeds or folds).
        views: None: every member sees the input as it is (2D planes under the bundle's plane inferer, or 3D
            volumes). Else one view per member (``sagittal``, ``coronal``, ``axial``): the members are 2D networks,
            the input is a 3D ROI batch ``(B, Cin, X, Y, Z)``, and each member runs over the planes of its own
            view (:func:`~hippogan.transforms.slicing.plane_inferer`): a multi-view ensemble.
        roi_size: with ``views``, the 2D window the members' planes are padded to (voxels).
        sw_batch_size: with ``views``, planes per member call.

    ``forward``: ``(B, Cin, *S)`` -> ``(B, C, *S)``, the log of the members' mean probability, so that it can stand
    where one network's logits do: its softmax is the mean probability and its argmax the ensemble's labels.

    Raises:
        ValueError: no members, or as many views as members not given (or an unknown view).
    """

    def __init__(
        self,
        members: Sequence[torch.nn.Module],
        views: Sequence[str] | None = None,
        roi_size: Sequence[int] = (64, 64),
        sw_batch_size: int = 128,
    ) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("ProbabilityEnsemble: give at least one member network.")
        if views is not None and len(views) != len(members):
            raise ValueError(f"ProbabilityEnsemble: {len(members)} members but {len(views)} views {list(views)}.")
        self.members = torch.nn.ModuleList(members)
        self.views = None if views is None else tuple(views)
        self.inferers = None if views is None else [plane_inferer(roi_size, sw_batch_size, view=v) for v in views]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inferers is None:
            outputs = (member(x) for member in self.members)
        else:
            outputs = (inferer(x, member) for inferer, member in zip(self.inferers, self.members))
        mean = torch.stack([as_plain_tensor(out).float().softmax(dim=1) for out in outputs]).mean(dim=0)
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
