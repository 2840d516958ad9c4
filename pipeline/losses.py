"""Losses of the conditional (pix2pix-style) GAN: the adversarial least-squares loss.

The supervised loss needs no class of its own: the paper's generator loss is the mean absolute
error (``torch.nn.L1Loss``) between the generator's probabilities and the one-hot expert label,
and any MONAI loss (``DiceLoss``, ``DiceCELoss``, ...) can replace it in
:class:`~hippogan.pipeline.trainer.ConditionalGanTrainer`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["GANLoss"]


class GANLoss(torch.nn.Module):
    """Adversarial loss that builds its own real/fake targets (pix2pix ``GANLoss``).

    The default criterion is the mean squared error (least-squares GAN, LSGAN), which is the
    adversarial loss of the Res-SEblock GAN (Deng et al., Sect. 3.2) and of pix2pix's ``lsgan``
    mode: the discriminator output is compared with a tensor of ``real_label`` (1.0) or
    ``fake_label`` (0.0) of the same shape, so patch outputs ``(B, 1, h, w)`` and image outputs
    ``(B, 1)`` both work.

    Args:
        criterion: ``(prediction, target) -> loss`` applied to the discriminator output and the
            target tensor; ``None`` builds ``torch.nn.MSELoss()``. Pass
            ``torch.nn.BCEWithLogitsLoss()`` for the original (vanilla) GAN on logits.
        real_label: target value for "real" (expert label map), 1.0 in the paper.
        fake_label: target value for "fake" (generated label map), 0.0 in the paper.

    Raises:
        ValueError: when ``real_label == fake_label``.

    Example::

        gan_loss = GANLoss()
        d_loss = 0.5 * (gan_loss(d(real_pair), True) + gan_loss(d(fake_pair.detach()), False))
        g_adv = gan_loss(d(fake_pair), True)
    """

    def __init__(
        self,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        real_label: float = 1.0,
        fake_label: float = 0.0,
    ) -> None:
        super().__init__()
        if real_label == fake_label:
            raise ValueError(f"real_label and fake_label must differ, got both {real_label}.")
        self.criterion = torch.nn.MSELoss() if criterion is None else criterion
        self.real_label = float(real_label)
        self.fake_label = float(fake_label)

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        """Return the adversarial loss (a 0-dim tensor).

        Args:
            prediction: discriminator output of any shape ``(B, ...)``.
            target_is_real: compare with ``real_label`` when True, with ``fake_label`` when False.
        """
        target = torch.full_like(prediction, self.real_label if target_is_real else self.fake_label)
        return self.criterion(prediction, target)
