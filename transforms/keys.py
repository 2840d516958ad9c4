"""Data keys shared by the transforms, the trainer, the bundle and the CLI.

``IMAGE``, ``LABEL`` and ``PRED`` are MONAI's :class:`monai.utils.CommonKeys`; ``SIDE`` is the one project
key: it holds ``"left"`` or ``"right"`` for a hemisphere sample (``"unknown"`` for a pre-cropped MSD case).
"""

from __future__ import annotations

from monai.utils import CommonKeys

__all__ = ["IMAGE", "LABEL", "PRED", "SIDE", "LEFT", "RIGHT", "UNKNOWN_SIDE"]

IMAGE: str = CommonKeys.IMAGE
LABEL: str = CommonKeys.LABEL
PRED: str = CommonKeys.PRED
SIDE = "side"
LEFT = "left"
RIGHT = "right"
UNKNOWN_SIDE = "unknown"
