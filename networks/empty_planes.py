"""Skip the all-zero 2D planes of a ROI (its padding): they get the network's cached output for a zero plane."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["EmptyPlaneSkipper"]


class EmptyPlaneSkipper:
    """Wrap a 2D network so that all-zero input planes skip it: they get its (cached) output for a zero plane.

    In eval mode a 2D network maps each plane independently, so this is exact (up to floating-point
    rounding); the ROI's zero padding (5-17 of 48 sagittal planes for an MSD crop) then costs nothing.

    The zero-plane output is computed once per plane shape, dtype and device: use one skipper per
    precision setting (e.g. with or without autocast), and a new one after the weights change.

    Args:
        network: the 2D network ``(N, C, H, W) -> (N, C_out, H, W)``, in eval mode (or any such function of
            planes, e.g. the mean probability of several networks).
    """

    def __init__(self, network: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.network = network
        self._zero_out: dict[tuple, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` planes -> ``(N, C_out, H, W)`` network outputs."""
        empty = ~x.flatten(1).any(dim=1)
        if not bool(empty.any()):
            return self.network(x)
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key not in self._zero_out:
            self._zero_out[key] = self.network(x.new_zeros((1, *x.shape[1:])))
        zero_out = self._zero_out[key]
        out = zero_out.expand(x.shape[0], *zero_out.shape[1:]).clone()
        if not bool(empty.all()):
            out[~empty] = self.network(x[~empty]).to(out.dtype)
        return out
