"""The conditional adversarial model of Deng et al. (section 2.2): image + label map in, realness score out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from torch import nn

__all__ = ["SegDiscriminator"]


class SegDiscriminator(nn.Module):
    """Conditional segmentation discriminator: convolution + max-pooling stages, then a score (logit).

    The input is the image concatenated with a label map along channels (pix2pix, Isola et al. 2017): the
    expert's one-hot labels or the generator's probabilities, so ``in_channels = image channels + label
    channels`` (2 for the paper's binary maps, 4 for a 1-channel image with 3 MSD classes). Each stage is a
    convolution (norm, except in the first stage, as in pix2pix; activation) followed by a 2x max-pooling
    (``ceil_mode``, so any input size of at least one voxel works). The score is a logit: the LSGAN (MSE)
    or BCE loss is the trainer's.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels + label channels.
        channels: widths of the stages (one convolution and one pooling each).
        kernel_size: convolution kernel size.
        act: activation type and arguments (default LeakyReLU 0.2).
        norm: normalisation type and arguments of all stages but the first.
        patch_output: ``False``: one score per sample, ``(B, 1)`` (global average pooling, then a linear
            layer); ``True``: a PatchGAN score map, ``(B, 1, *ceil(S / 2 ** len(channels)))`` (a final
            convolution).

    Shapes: ``(B, in_channels, H, W[, D])`` -> ``(B, 1)`` or ``(B, 1, h, w[, d])``.

    Raises:
        ValueError: unsupported ``spatial_dims``, ``in_channels`` below 2, empty or non-positive ``channels``,
            even ``kernel_size``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 2,
        channels: Sequence[int] = (64, 128, 256, 512),
        kernel_size: int = 3,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.2, "inplace": True}),
        norm: str | tuple = "batch",
        patch_output: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 2:
            raise ValueError(f"in_channels must count image + label channels (>= 2), got {in_channels}.")
        if len(channels) == 0 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be one or more positive integers, got {tuple(channels)}.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}.")
        pool = Pool[Pool.MAX, spatial_dims]
        stages: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(int(c) for c in channels):
            stages += [
                Convolution(
                    spatial_dims, c_in, c_out, kernel_size=kernel_size, act=act, norm=None if i == 0 else norm
                ),
                pool(kernel_size=2, ceil_mode=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*stages)
        if patch_output:
            self.head: nn.Module = Convolution(spatial_dims, c_in, 1, kernel_size=kernel_size, conv_only=True)
        else:
            self.head = nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](1), nn.Flatten(1), nn.Linear(c_in, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S)`` (image and label map concatenated) -> ``(B, 1)`` or ``(B, 1, *S')`` logits."""
        return self.head(self.features(x))
