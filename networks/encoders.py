"""Multi-scale encoders of the generator: MONAI's ``ResNet`` returning the feature map of every scale."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock

from .blocks import PlainBlock

__all__ = ["ResNetFeatureEncoder", "ENCODER_BLOCKS"]

ENCODER_BLOCKS: dict[str, type[ResNetBlock | PlainBlock]] = {"residual": ResNetBlock, "plain": PlainBlock}
"""Encoder kinds of the paper's ablation (Table 1): ResNet basic blocks, or the same blocks without shortcut."""


class ResNetFeatureEncoder(ResNet):
    """MONAI ``ResNet`` (7x7 stride-2 stem, 3x3 max-pool, four stages) that returns one feature map per scale.

    With the defaults this is ResNet34 (basic blocks, layers 3-4-6-3, width 64-128-256-512; He et al. 2016),
    as in Deng et al. section 2.1; ``encoder="plain"`` keeps depth and width but drops every shortcut (the
    "GAN" and "SEblock GAN" rows of Table 1). Like :class:`monai.networks.nets.resnet.ResNetFeatures`, but
    with any width, projection ("B") shortcuts so that it scripts, and no pretrained weights.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        channels: widths of the four stages (the stem has ``channels[0]``).
        layers: blocks per stage.
        encoder: ``"residual"`` (ResNet basic blocks) or ``"plain"`` (:class:`PlainBlock`).

    Shapes: ``(B, in_channels, *S)`` -> five maps ``(B, out_channels[i], *S / 2 ** (i + 1))``, strides 2, 4, 8,
    16, 32 (ceil-divided for sizes that are not multiples).

    Raises:
        ValueError: ``spatial_dims`` not 2 or 3, unknown ``encoder``, or ``channels``/``layers`` not four positive integers.
    """

    reduction: int = 32

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (3, 4, 6, 3),
        encoder: str = "residual",
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if encoder not in ENCODER_BLOCKS:
            raise ValueError(f"encoder must be one of {sorted(ENCODER_BLOCKS)}, got {encoder!r}.")
        for name, values in (("channels", channels), ("layers", layers)):
            if len(values) != 4 or any(int(v) < 1 for v in values):
                raise ValueError(f"{name} must be 4 positive integers (one per ResNet stage), got {tuple(values)}.")
        super().__init__(
            block=ENCODER_BLOCKS[encoder],
            layers=[int(v) for v in layers],
            block_inplanes=[int(c) for c in channels],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            feed_forward=False,
            bias_downsample=False,
        )
        self.out_channels: tuple[int, ...] = (int(channels[0]), *(int(c) for c in channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, in_channels, *S)`` -> ``[stem (S/2), layer1 (S/4), layer2 (S/8), layer3 (S/16), layer4 (S/32)]``."""
        x = self.act(self.bn1(self.conv1(x)))
        features = [x]
        x = self.layer1(self.maxpool(x))
        features.append(x)
        x = self.layer2(x)
        features.append(x)
        x = self.layer3(x)
        features.append(x)
        x = self.layer4(x)
        features.append(x)
        return features
