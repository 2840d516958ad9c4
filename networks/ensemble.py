"""Several segmentation networks as one: the mean of their class probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hippogan.transforms.slicing import as_plain_tensor, plane_inferer

from .empty_planes import EmptyPlaneSkipper

__all__ = ["ProbabilityEnsemble"]


class ProbabilityEnsemble(torch.nn.Module):
    """Average the softmax probabilities of networks that map one input to the same classes.

    Args:
        members: networks ``(B, Cin, *S) -> (B, C, *S)`` logits, ``C >= 2`` classes (e.g. generators trained with
            different seeds or folds).
        views: None: every member sees the input as it is (2D planes under the bundle's plane inferer, or 3D
            volumes). Else one view per member (``sagittal``, ``coronal``, ``axial``): the members are 2D networks,
            the input is a 3D ROI batch ``(B, Cin, X, Y, Z)``, and each member runs over the planes of its own
            view (:func:`~hippogan.transforms.slicing.plane_inferer`): a multi-view ensemble. The members of one
            view share one pass over its planes; in eval mode all-zero planes (the ROI's padding) skip the
            networks (:class:`~hippogan.networks.EmptyPlaneSkipper`).
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
        self._passes = []  # (inferer, member indices, its empty-plane skipper) per view, in order of appearance
        for view in dict.fromkeys(self.views or ()):
            indices = [i for i, v in enumerate(self.views) if v == view]
            self._passes.append((plane_inferer(roi_size, sw_batch_size, view=view), indices,
                                 EmptyPlaneSkipper(lambda planes, ix=indices: self._mean_probability(planes, ix))))

    def _mean_probability(self, x: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([as_plain_tensor(self.members[i](x)).float().softmax(dim=1) for i in indices]).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.views is None:
            mean = self._mean_probability(x, range(len(self.members)))
        else:
            mean = 0.0
            for inferer, indices, skipper in self._passes:  # training: no cached zero-plane output
                per_plane = skipper.network if self.training else skipper
                mean = mean + len(indices) * as_plain_tensor(inferer(x, per_plane)).float()
            mean = mean / len(self.members)
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
