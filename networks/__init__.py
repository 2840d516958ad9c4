"""MONAI-compatible networks of the Res-SEblock GAN (Deng et al.): generator, discriminator, ablations.

- :class:`ResSEGenerator`: ResNet34 encoder + SE/Inception decoder; ``(B, Cin, *S) -> (B, Cout, *S)`` logits.
- :class:`SegDiscriminator`: conditional discriminator; ``cat(image, label map)`` -> ``(B, 1)`` logits.
- :data:`ABLATION_VARIANTS`: generator kwargs of the paper's Table 1 rows.
- :class:`ProbabilityEnsemble`: several trained networks as one (mean class probability), of one view or several.
- :class:`EmptyPlaneSkipper`: all-zero 2D planes (a ROI's padding) get a cached zero-plane output.

A generator is any ``nn.Module`` mapping ``(B, Cin, H, W[, D])`` to ``(B, Cout, H, W[, D])`` logits, so
MONAI's ``UNet`` and ``AttentionUnet`` (the paper's Table 2) plug in unchanged. ``networks/README.md``
gives the ``_target_`` config of every network.
"""

from __future__ import annotations

from .blocks import FactorizedInception, PlainBlock, SEDecoderBlock, factorized_kernels
from .discriminator import SegDiscriminator
from .encoders import ENCODER_BLOCKS, ResNetFeatureEncoder
from .empty_planes import EmptyPlaneSkipper
from .ensemble import ProbabilityEnsemble
from .generator import ABLATION_VARIANTS, ResSEGenerator

__all__ = [
    "ABLATION_VARIANTS",
    "ENCODER_BLOCKS",
    "EmptyPlaneSkipper",
    "FactorizedInception",
    "PlainBlock",
    "ProbabilityEnsemble",
    "ResNetFeatureEncoder",
    "ResSEGenerator",
    "SEDecoderBlock",
    "SegDiscriminator",
    "factorized_kernels",
]
