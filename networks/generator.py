"""The Res-SEblock generator of Deng et al. (section 2.1, Fig. 2a) and its ablation variants (Table 1)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv
from torch import nn

from .blocks import SEDecoderBlock
from .encoders import ResNetFeatureEncoder

__all__ = ["ResSEGenerator", "ABLATION_VARIANTS"]

ABLATION_VARIANTS: dict[str, dict[str, object]] = {
    "GAN": {"encoder": "plain", "se": False},
    "Res GAN": {"encoder": "residual", "se": False},
    "SEblock GAN": {"encoder": "plain", "se": True},
    "Res SEblock GAN": {"encoder": "residual", "se": True},
}
"""The generator kwargs of each row of Deng et al. Table 1 (add them to a ``_target_`` dict)."""

_OUT_ACTS: dict[str | None, Callable[[], nn.Module]] = {
    None: nn.Identity,
    "sigmoid": nn.Sigmoid,
    "softmax": partial(nn.Softmax, dim=1),
}
_PAD_MODES = ("constant", "reflect", "replicate")


class ResSEGenerator(nn.Module):
    """Res-SEblock generator: ResNet34 encoder, SE + Inception decoder, label-map head (Deng et al., section 2.1).

    Encoder: :class:`~hippogan.networks.encoders.ResNetFeatureEncoder` (MONAI ``ResNet``; five feature
    maps at strides 2-32). Decoder: five :class:`~hippogan.networks.blocks.SEDecoderBlock` (upsample,
    concatenate the skip, channel-adjusting convolution, SE block, factorised Inception block); the last one
    returns to full resolution, without a skip unless ``stem_skip`` adds one from the input. Head: a 3x3(x3) convolution to ``out_channels`` logits,
    then ``out_act``.

    ``stem_skip > 0`` (beyond the paper, whose finest skip is the stride-2 stem): a full-resolution 3x3(x3)
    convolution of the input (``stem_skip`` channels, norm, activation) becomes the skip of the last decoder
    scale, so boundaries are decoded with full-resolution features (as in a U-Net).

    Inputs of any spatial size work: each axis is padded (``pad_mode``, centred) up to the next multiple
    of 32 (:attr:`size_divisible`) and the output is cropped back, so ``(B, C, 35, 51)`` gives
    ``(B, out_channels, 35, 51)``; multiples of 32 (e.g. 64x64) are not padded.

    The paper's ablation (Table 1, also :data:`ABLATION_VARIANTS`): "GAN" = ``encoder="plain", se=False``;
    "Res GAN" = ``encoder="residual", se=False``; "SEblock GAN" = ``encoder="plain", se=True``;
    "Res SEblock GAN" (the defaults) = ``encoder="residual", se=True``.

    Args:
        spatial_dims: 2 (the paper: 64x64 sagittal slices) or 3 (a 3D variant, beyond the paper).
        in_channels: image channels.
        out_channels: label maps: 1 (binary hippocampus, the paper) or 3 (background/anterior/posterior, MSD).
        encoder: ``"residual"`` (ResNet34) or ``"plain"`` (same depth and width without shortcuts).
        se: SE block in each decoder scale.
        inception: Inception block in each decoder scale (else a 3x3 convolution).
        channels: encoder stage widths (ResNet34: 64-128-256-512); narrow values give small test nets.
        layers: encoder blocks per stage (ResNet34: 3-4-6-3).
        decoder_channels: widths of the five decoder scales, coarsest first.
        se_reduction: SE reduction ratio r (the paper: 16); the excitation's hidden width is ``channels // r``.
        inception_kernels: receptive fields of the Inception's factorised branches (3: 1x3 + 3x1; 5: 1x5 + 5x1).
        act: decoder activation type and arguments.
        norm: decoder normalisation type and arguments.
        out_act: ``None`` (logits), ``"sigmoid"`` or ``"softmax"`` (over channels; needs ``out_channels >= 2``).
        pad_mode: how inputs are padded to a multiple of 32: ``"constant"`` (zeros), ``"reflect"``, ``"replicate"``.
        stem_skip: channels of the full-resolution skip into the last decoder scale (0: none, the paper).

    Shapes: ``(B, in_channels, H, W[, D])`` -> ``(B, out_channels, H, W[, D])``.

    Raises:
        ValueError: unsupported ``spatial_dims``, ``encoder``, ``out_act``, ``pad_mode``, widths or ratios.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        encoder: str = "residual",
        se: bool = True,
        inception: bool = True,
        channels: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (3, 4, 6, 3),
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        se_reduction: int = 16,
        inception_kernels: Sequence[int] = (3, 5),
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
        out_act: str | None = None,
        pad_mode: str = "replicate",
        stem_skip: int = 0,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}.")
        if out_act not in _OUT_ACTS:
            raise ValueError(f"out_act must be one of {list(_OUT_ACTS)}, got {out_act!r}.")
        if out_act == "softmax" and out_channels < 2:
            raise ValueError("out_act='softmax' needs out_channels >= 2; use 'sigmoid' for one label map.")
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode must be one of {_PAD_MODES}, got {pad_mode!r}.")
        if stem_skip < 0:
            raise ValueError(f"stem_skip must be >= 0 channels, got {stem_skip}.")
        if len(decoder_channels) != 5 or any(int(c) < 1 for c in decoder_channels):
            raise ValueError(
                f"decoder_channels must be 5 positive integers (one per encoder scale), got {tuple(decoder_channels)}."
            )
        self.spatial_dims = spatial_dims
        self.pad_mode = pad_mode
        self.size_divisible: int = ResNetFeatureEncoder.reduction
        self.encoder = ResNetFeatureEncoder(spatial_dims, in_channels, channels, layers, encoder)
        self.stem_skip: nn.Module | None = (
            Convolution(spatial_dims, in_channels, int(stem_skip), kernel_size=3, act=act, norm=norm, bias=False)
            if stem_skip > 0
            else None
        )
        skip_channels = [*self.encoder.out_channels[:-1][::-1], int(stem_skip)]
        block_in = [self.encoder.out_channels[-1], *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(
            SEDecoderBlock(
                spatial_dims,
                int(c_in),
                c_skip,
                int(c_out),
                se=se,
                se_reduction=se_reduction,
                inception=inception,
                inception_kernels=inception_kernels,
                act=act,
                norm=norm,
            )
            for c_in, c_skip, c_out in zip(block_in, skip_channels, decoder_channels)
        )
        self.head = Conv[Conv.CONV, spatial_dims](int(decoder_channels[-1]), out_channels, kernel_size=3, padding=1)
        self.out_act = _OUT_ACTS[out_act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S)`` -> ``(B, out_channels, *S)`` logits (or ``out_act`` of them), any ``S``."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a (B, C, {self.spatial_dims} spatial axes) tensor, got shape {list(x.shape)}.")
        sizes = x.shape[2:]
        starts: list[int] = []
        pads: list[int] = []  # F.pad order: last axis first, (before, after) per axis
        for size in sizes:
            total = (self.size_divisible - size % self.size_divisible) % self.size_divisible
            starts.append(total // 2)
            pads = [total // 2, total - total // 2] + pads
        padded = sum(pads) > 0
        if padded:
            x = F.pad(x, pads, mode=self.pad_mode)

        features = self.encoder(x)
        skips = features[:-1][::-1]
        if self.stem_skip is not None:
            skips.append(self.stem_skip(x))
        y = features[-1]
        for i, block in enumerate(self.decoder):
            skip: torch.Tensor | None = skips[i] if i < len(skips) else None
            y = block(y, skip)
        y = self.head(y)

        if padded:
            for axis in range(len(sizes)):
                y = y.narrow(axis + 2, starts[axis], sizes[axis])
        return self.out_act(y)
