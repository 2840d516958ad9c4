"""Several segmentation networks as one: the mean of their class probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["ProbabilityEnsemble"]


class ProbabilityEnsemble(torch.nn.Module):
    """Average the softmax probabilities of networks that map one input to the same classes.

    Args:
        members: networks ``(B, Cin, *S) -> (B, C, *S)`` logits, ``C >= 2`` classes (e.g. generators trained with
            different seeds or folds).

    ``forward``: ``(B, Cin, *S)`` -> ``(B, C, *S)``, the log of the members' mean probability, so that it can stand
    where one network's logits do: its softmax is the mean probability and its argmax the ensemble's labels.
    """

    def __init__(self, members: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("ProbabilityEnsemble: give at least one member network.")
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([member(x).float().softmax(dim=1) for member in self.members]).mean(dim=0)
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
