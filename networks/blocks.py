"""Building blocks of the Res-SEblock generator (Deng et al., section 2.1, Fig. 2).

- :class:`PlainBlock`: the non-residual twin of MONAI's ``ResNetBlock`` (the "plain" encoder of the
  paper's ablation, Table 1).
- :class:`FactorizedInception`: the Inception block of Fig. 2c, NxN kernels factorised into 1D kernels.
- :class:`SEDecoderBlock`: one decoder scale: upsample, concatenate the skip, adjust the channels with a
  convolution, SE block (Fig. 2b), Inception block.

All blocks take ``spatial_dims`` (2 or 3) and build their layers from MONAI's factories.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer, Convolution
from torch import nn

__all__ = ["PlainBlock", "FactorizedInception", "SEDecoderBlock", "factorized_kernels"]


class PlainBlock(nn.Module):
    """Two 3x3(x3) convolutions with norm and activation and no shortcut: a ``ResNetBlock`` without residual.

    The signature matches :class:`monai.networks.nets.resnet.ResNetBlock`, so MONAI's ``ResNet`` builds a
    plain encoder of the same depth and width from it. ``ResNet`` hands every first block of a stage a
    projection shortcut (``downsample``); a plain block has no shortcut, so it is not kept.

    Args:
        in_planes: input channels.
        planes: output channels.
        spatial_dims: 2 or 3.
        stride: stride of the first convolution (2 halves each spatial size).
        downsample: ignored (the shortcut projection of a residual block).
        act: activation type and arguments.
        norm: normalisation type and arguments.

    Shapes: ``(B, in_planes, *S)`` -> ``(B, planes, *ceil(S / stride))``.
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        spatial_dims: int = 3,
        stride: int = 1,
        downsample: nn.Module | None = None,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        del downsample
        self.convs = nn.Sequential(
            Convolution(spatial_dims, in_planes, planes, strides=stride, kernel_size=3, act=act, norm=norm, bias=False),
            Convolution(spatial_dims, planes, planes, kernel_size=3, act=act, norm=norm, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_planes, *S)`` -> ``(B, planes, *S')``."""
        return self.convs(x)


def factorized_kernels(kernel_size: int, spatial_dims: int) -> list[tuple[int, ...]]:
    """The 1D kernels that replace one ``kernel_size``-cubed kernel, last axis first.

    2D: ``3`` -> ``[(1, 3), (3, 1)]`` (the paper's 1x3 then 3x1); 3D: ``3`` -> ``[(1, 1, 3), (1, 3, 1), (3, 1, 1)]``.

    Args:
        kernel_size: the odd size N of the NxN(xN) kernel to factorise.
        spatial_dims: number of spatial axes (one 1D kernel per axis).
    """
    kernels = []
    for axis in reversed(range(spatial_dims)):
        kernel = [1] * spatial_dims
        kernel[axis] = kernel_size
        kernels.append(tuple(kernel))
    return kernels


class FactorizedInception(nn.Module):
    """Inception block with asymmetric (factorised) kernels, Deng et al. Fig. 2c.

    Parallel branches, concatenated along channels:

    - a 1x1 convolution;
    - per N in ``kernel_sizes``: a 1x1 reduction, then an NxN receptive field factorised into one 1D
      convolution per axis (2D: 1xN then Nx1; 3D: 1x1xN, 1xNx1, then Nx1x1).

    Every convolution is followed by norm and activation. The ``out_channels`` are split evenly over the
    branches (the remainder goes to the 1x1 branch).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (at least the number of branches).
        kernel_sizes: odd receptive-field sizes of the factorised branches, e.g. ``(3, 5)``.
        act: activation type and arguments.
        norm: normalisation type and arguments.

    Shapes: ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)``.

    Raises:
        ValueError: an even or non-positive kernel size, or fewer output channels than branches.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_sizes: Sequence[int] = (3, 5),
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        kernel_sizes = tuple(kernel_sizes)
        if any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"inception kernel_sizes must be odd positive integers, got {kernel_sizes}.")
        n_branches = len(kernel_sizes) + 1
        if out_channels < n_branches:
            raise ValueError(f"inception out_channels={out_channels} is below its number of branches ({n_branches}).")
        widths = [out_channels // n_branches] * n_branches
        widths[0] += out_channels - sum(widths)

        def conv(c_in: int, c_out: int, kernel: int | tuple[int, ...]) -> Convolution:
            return Convolution(spatial_dims, c_in, c_out, kernel_size=kernel, act=act, norm=norm, bias=False)

        branches = [conv(in_channels, widths[0], 1)]
        for kernel_size, width in zip(kernel_sizes, widths[1:]):
            layers = [conv(in_channels, width, 1)]
            layers += [conv(width, width, k) for k in factorized_kernels(kernel_size, spatial_dims)]
            branches.append(nn.Sequential(*layers))
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S)`` -> ``(B, out_channels, *S)``."""
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class SEDecoderBlock(nn.Module):
    """One decoder scale of the Res-SEblock generator (Deng et al. Fig. 2a).

    upsample x2 (nearest, or to the skip's size) -> concatenate the skip -> 3x3 convolution that adjusts
    the concatenated channels -> SE block (MONAI ``ChannelSELayer``, hidden width ``out_channels // r``)
    -> Inception block (:class:`FactorizedInception`). The excitation's first bias starts at 1, so its
    hidden ReLUs start active (the SE input is non-negative). With ``se=False`` the SE block is skipped; with
    ``inception=False`` a plain 3x3 convolution replaces the Inception block (same depth).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the coarser input.
        skip_channels: channels of the skip connection (0: none).
        out_channels: output channels.
        se: use the SE block.
        se_reduction: the SE reduction ratio r (the paper: 16); at most ``out_channels``.
        inception: use the Inception block.
        inception_kernels: receptive-field sizes of the Inception's factorised branches.
        act: activation type and arguments.
        norm: normalisation type and arguments.

    Shapes: ``x`` ``(B, in_channels, *S)``, ``skip`` ``(B, skip_channels, *S_skip)`` or ``None`` ->
    ``(B, out_channels, *S_skip)`` (``*2S`` without skip).

    Raises:
        ValueError: ``se_reduction`` not in ``[1, out_channels]`` while ``se`` is on.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        se: bool = True,
        se_reduction: int = 16,
        inception: bool = True,
        inception_kernels: Sequence[int] = (3, 5),
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if se and not 1 <= se_reduction <= out_channels:
            raise ValueError(
                f"se_reduction must lie in [1, {out_channels}] (the decoder width at this scale), got {se_reduction}."
            )
        self.adjust = Convolution(
            spatial_dims, in_channels + skip_channels, out_channels, kernel_size=3, act=act, norm=norm, bias=False
        )
        self.se: nn.Module = nn.Identity()
        if se:
            se_layer = ChannelSELayer(spatial_dims, out_channels, r=se_reduction)
            # The squeezed input is a mean of ReLU outputs (>= 0): with a zero-mean bias a hidden unit starts
            # inactive for every input about half of the time, and at r = 16 a 16-channel SE has only one.
            nn.init.ones_(se_layer.fc[0].bias)
            self.se = se_layer
        self.features: nn.Module = (
            FactorizedInception(spatial_dims, out_channels, out_channels, inception_kernels, act=act, norm=norm)
            if inception
            else Convolution(spatial_dims, out_channels, out_channels, kernel_size=3, act=act, norm=norm, bias=False)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, in_channels, *S)`` and ``(B, skip_channels, *S_skip)`` or ``None`` -> ``(B, out_channels, *S_out)``."""
        if skip is not None:
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            x = torch.cat([x, skip], dim=1)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.features(self.se(self.adjust(x)))
