"""Conditional (pix2pix-style) GAN trainer for image-to-label-map segmentation, as a MONAI engine.

The Res-SEblock GAN of Deng et al. trains a segmentation generator G against a discriminator D
that judges (image, label map) pairs: the expert label map is "real", G's label map is "fake".
:class:`ConditionalGanTrainer` is a :class:`monai.engines.Trainer`, so MONAI and ignite handlers
(``StatsHandler``, ``TensorBoardStatsHandler``, ``ValidationHandler``, ``ProgressBar``, the
checkpoint handler of :mod:`hippogan.pipeline.checkpoint`) attach to it unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.engines.workflow import Workflow
from monai.losses import PatchAdversarialLoss
from monai.networks.utils import one_hot
from monai.utils import CommonKeys, StrEnum
from torch.optim import Optimizer
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from ignite.engine import Engine
    from ignite.handlers import ProgressBar
    from ignite.metrics import Metric

__all__ = [
    "ConditionalGanTrainer",
    "GanLossKeys",
    "attach_progress_bar",
    "default_activation",
    "default_adversarial_loss",
    "default_optimizer",
    "gan_losses",
    "label_to_one_hot",
]

logger = logging.getLogger(__name__)


class GanLossKeys(StrEnum):
    """Keys of the losses in ``engine.state.output`` (0-dim detached tensors).

    ``G_LOSS`` is the generator total ``supervised_weight * G_SUP_LOSS + adversarial_weight *
    G_ADV_LOSS`` and equals ``CommonKeys.LOSS``; ``D_LOSS`` is the discriminator loss. Both
    adversarial entries are 0 when the trainer runs without discriminator.
    """

    G_LOSS = "g_loss"
    D_LOSS = "d_loss"
    G_SUP_LOSS = "g_sup_loss"
    G_ADV_LOSS = "g_adv_loss"


def default_activation(logits: torch.Tensor) -> torch.Tensor:
    """Turn generator logits ``(B, C, H, W[, D])`` into a label map of probabilities, same shape.

    One channel: sigmoid (probability of "hippocampus"); more channels: softmax over the channels.
    """
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def default_optimizer(
    parameters: Iterable[torch.Tensor] | Iterable[dict],
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    **kwargs: Any,
) -> torch.optim.NAdam:
    """Return the paper's optimiser, ``torch.optim.NAdam(parameters, lr=2e-4, betas=(0.5, 0.999))``.

    Deng et al. (Sect. 3.3) train both networks with Nadam, beta1 = 0.5 and learning rate 0.0002.
    In a bundle config the same is ``{"_target_": "torch.optim.NAdam", "params":
    "$@g_network.parameters()", "lr": 0.0002, "betas": [0.5, 0.999]}``.

    Args:
        parameters: the network's parameters (or parameter groups).
        lr: learning rate.
        betas: coefficients of the running averages of the gradient and its square.
        kwargs: other ``torch.optim.NAdam`` arguments (``weight_decay``, ...).
    """
    return torch.optim.NAdam(parameters, lr=lr, betas=betas, **kwargs)


def default_adversarial_loss() -> PatchAdversarialLoss:
    """Return the least-squares (LSGAN) adversarial loss of Deng et al. (Sect. 3.2) and pix2pix's ``lsgan`` mode.

    ``monai.losses.PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)``: the mean squared
    error between the discriminator output (any shape ``(B, ...)``, raw scores) and a tensor of 1 ("real") or 0
    ("fake") of the same shape. ``no_activation_leastsq=True`` matters: MONAI's default puts a LeakyReLU(0.05) on the
    scores first, which is not the paper's loss. In a bundle config: ``{"_target_": "PatchAdversarialLoss",
    "criterion": "least_squares", "no_activation_leastsq": true}``.
    """
    return PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)


def label_to_one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Convert an expert label map to the generator's channel layout, as float.

    Args:
        label: ``(B, 1, H, W[, D])`` integer-valued class map (0 = background), or an already
            one-hot ``(B, num_classes, H, W[, D])`` map when ``num_classes > 1``.
        num_classes: the generator's output channels. With 1 the target is the binary map
            ``label > 0`` (the union of all foreground classes, "the hippocampus" of the paper);
            with ``C > 1`` it is the one-hot map of classes ``0..C-1``.

    Returns:
        ``(B, num_classes, H, W[, D])`` float tensor of 0 and 1.

    Raises:
        ValueError: when the label's channels or values do not fit ``num_classes``.
    """
    if label.ndim < 3:
        raise ValueError(f"label must be (B, 1, H, W[, D]), got shape {tuple(label.shape)}.")
    if num_classes > 1 and label.shape[1] == num_classes:
        return label.float()
    if label.shape[1] != 1:
        raise ValueError(
            f"label must have 1 channel (a class map) or {num_classes} (one-hot) for a {num_classes}-channel "
            f"generator, got shape {tuple(label.shape)}."
        )
    if num_classes == 1:
        return (label > 0).float()
    low, high = float(label.min()), float(label.max())
    if low < 0 or high > num_classes - 1:
        raise ValueError(
            f"label values must lie in [0, {num_classes - 1}] for a {num_classes}-channel generator, "
            f"got [{low}, {high}]."
        )
    return one_hot(label, num_classes=num_classes, dim=1)


def gan_losses(output: dict | Sequence[dict]) -> dict[str, float]:
    """Pick the four losses of :class:`GanLossKeys` from ``engine.state.output`` as floats.

    Use it as ``output_transform`` of ``StatsHandler``, ``TensorBoardStatsHandler`` or ``ProgressBar``.
    A decollated output (a list, one dict per sample, ``decollate=True``) gives the first sample's
    values, which hold the batch losses.
    """
    first = output[0] if isinstance(output, (list, tuple)) else output
    return {str(key): float(first[key]) for key in GanLossKeys}


def attach_progress_bar(engine: Engine, persist: bool = False, **tqdm_kwargs: Any) -> ProgressBar:
    """Attach an ignite ``ProgressBar`` (tqdm) that shows the four :class:`GanLossKeys` losses.

    Args:
        engine: the trainer.
        persist: keep the bar of each finished epoch on screen.
        tqdm_kwargs: other ``tqdm`` arguments (``ncols``, ``file``, ...).

    Returns:
        the attached ``ignite.handlers.ProgressBar``.
    """
    from ignite.handlers import ProgressBar

    bar = ProgressBar(persist=persist, **tqdm_kwargs)
    bar.attach(engine, output_transform=gan_losses)
    return bar


class ConditionalGanTrainer(Trainer):
    """Conditional GAN training of a segmentation generator (pix2pix; Deng et al.'s Res-SEblock GAN).

    Each iteration, with ``image`` ``(B, 1, H, W[, D])`` and expert ``label`` ``(B, 1, H, W[, D])``
    from ``prepare_batch``:

    1. **Generator forward**: ``logits = g_network(image)``, ``(B, C, H, W[, D])``; the label map
       is ``probs = g_activation(logits)`` (sigmoid for C = 1, softmax over channels for C > 1).
       The expert label becomes the target ``(B, C, H, W[, D])`` by :func:`label_to_one_hot`
       (C = 1: binary ``label > 0``; C > 1: one-hot of classes ``0..C-1``).
    2. **Discriminator step**: D judges ``cat(image, target)`` as real and
       ``cat(image, probs.detach())`` as fake;
       ``d_loss = 0.5 * (adv(D(real), True) + adv(D(fake), False))`` (pix2pix halves it to slow D).
       ``adv`` is least squares against targets 1 / 0 (:func:`default_adversarial_loss`).
    3. **Generator step** with D frozen (``requires_grad=False`` on its parameters):
       ``g_loss = supervised_weight * g_loss_function(probs, target) + adversarial_weight *
       adv(D(cat(image, probs)), True)``.

    ``adversarial_weight=0`` is the "generator alone" ablation: D is never run nor stepped (it may
    be ``None``) and the D losses are reported as 0.

    Weighting: the paper names the losses (MAE for G, MSE for the adversarial model, Sect. 3.2)
    but not their weights; the defaults follow pix2pix (``lambda_L1 = 100``, GAN weight 1), as does
    the common Keras port (``loss_weights=[1, 100]`` on ``['mse', 'mae']``).

    ``engine.state.output`` holds ``CommonKeys.IMAGE`` (the input), ``CommonKeys.LABEL`` (the target
    after :func:`label_to_one_hot`), ``CommonKeys.PRED`` (generator logits; apply
    ``Activations``/``AsDiscrete`` in ``postprocessing`` for metrics), ``CommonKeys.LOSS`` (= ``g_loss``)
    and the four :class:`GanLossKeys`. ``IterationEvents`` fire in order: ``FORWARD_COMPLETED``
    (after G forward), ``LOSS_COMPLETED`` (after the D step and the G loss), ``BACKWARD_COMPLETED``
    (after G backward, D still frozen), ``MODEL_COMPLETED`` (after the G step).

    AMP: with ``amp=True`` on a CUDA device, forwards run under ``torch.autocast`` and each
    network has its own ``torch.amp.GradScaler`` (``g_scaler``, ``d_scaler``); on CPU ``amp`` is
    ignored and the same code runs with disabled scalers.

    Args:
        device: device to train on.
        max_epochs: total number of epochs (a resumed run counts the epochs already done).
        train_data_loader: iterable of batches, each ``{"image": ..., "label": ...}`` for the
            default ``prepare_batch``.
        g_network: generator, image ``(B, 1, H, W[, D])`` -> logits ``(B, C, H, W[, D])``.
        g_optimizer: optimiser of ``g_network`` (the paper's: :func:`default_optimizer`).
        d_network: discriminator, ``(B, 1 + C, H, W[, D])`` -> score map or score ``(B, ...)``; if
            it returns a list or tuple (MONAI ``PatchDiscriminator`` returns its intermediate feature
            maps then the prediction) the last element is the prediction. ``None`` only with
            ``adversarial_weight=0``.
        d_optimizer: optimiser of ``d_network``; ``None`` only with ``adversarial_weight=0``.
        g_loss_function: supervised loss ``(probs_or_logits, target) -> loss``; ``None`` gives
            ``torch.nn.L1Loss()`` (the paper's MAE). A ``monai.losses.DiceLoss()`` works on
            probabilities; ``DiceCELoss(softmax=True)`` needs ``supervised_on_logits=True``.
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking: asynchronous host-to-device copies where possible.
        prepare_batch: ``(batchdata, device, non_blocking, **kwargs) -> (image, label)`` or
            ``(image, label, args, kwargs)`` (extra arguments of ``g_network``).
        iteration_update: replaces :meth:`_iteration` when given (ignite's process function).
        postprocessing: transform applied to the output after each iteration.
        key_train_metric: ``{name: ignite Metric}`` computed on the training output.
        additional_metrics: more ``{name: ignite Metric}``.
        metric_cmp_fn: ``(current, best) -> bool``, True when ``current`` is better.
        train_handlers: handlers with ``attach(engine)``, attached in order.
        amp: mixed precision on CUDA (see above).
        decollate: decollate the batch and output into per-sample lists after each iteration.
        adversarial_loss: ``(d_output, target_is_real: bool, for_discriminator: bool) -> loss``, the interface
            of ``monai.losses.PatchAdversarialLoss``; ``None`` gives :func:`default_adversarial_loss`
            (least squares, targets 1/0).
        supervised_weight: weight of the supervised term in ``g_loss`` (pix2pix ``lambda_L1``), >= 0.
        adversarial_weight: weight of the adversarial term in ``g_loss``, >= 0; 0 trains G alone.
        g_activation: logits -> label map given to D and (unless ``supervised_on_logits``) to the
            supervised loss; ``None`` gives :func:`default_activation`. Pass ``torch.nn.Identity()``
            when ``g_network`` already ends with its activation.
        supervised_on_logits: give the supervised loss the logits instead of the probabilities.
        event_names: extra ignite events to register.
        event_to_attr: map from those events to ``engine.state`` attributes.
        optim_set_to_none: ``zero_grad(set_to_none=...)`` for both optimisers.
        to_kwargs: extra arguments of ``prepare_batch``'s ``Tensor.to`` calls.
        amp_kwargs: extra arguments of ``torch.autocast`` (e.g. ``{"dtype": torch.bfloat16}``).

    Raises:
        ValueError: on negative or all-zero weights, or a missing D / D optimiser with
            ``adversarial_weight > 0``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        g_network: torch.nn.Module,
        g_optimizer: Optimizer,
        d_network: torch.nn.Module | None,
        d_optimizer: Optimizer | None,
        g_loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        decollate: bool = False,
        adversarial_loss: Callable[..., torch.Tensor] | None = None,
        supervised_weight: float = 100.0,
        adversarial_weight: float = 1.0,
        g_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        supervised_on_logits: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        if supervised_weight < 0 or adversarial_weight < 0:
            raise ValueError(
                "supervised_weight and adversarial_weight must be >= 0, "
                f"got {supervised_weight} and {adversarial_weight}."
            )
        if supervised_weight == 0 and adversarial_weight == 0:
            raise ValueError("supervised_weight and adversarial_weight are both 0: the generator would not learn.")
        if adversarial_weight > 0 and (d_network is None or d_optimizer is None):
            raise ValueError(
                f"adversarial_weight={adversarial_weight} needs d_network and d_optimizer; "
                "pass adversarial_weight=0 to train the generator alone."
            )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.g_network = g_network
        self.g_optimizer = g_optimizer
        self.d_network = d_network
        self.d_optimizer = d_optimizer
        self.g_loss_function = torch.nn.L1Loss() if g_loss_function is None else g_loss_function
        self.adversarial_loss = default_adversarial_loss() if adversarial_loss is None else adversarial_loss
        self.supervised_weight = float(supervised_weight)
        self.adversarial_weight = float(adversarial_weight)
        self.g_activation = default_activation if g_activation is None else g_activation
        self.supervised_on_logits = supervised_on_logits
        self.optim_set_to_none = optim_set_to_none
        device_type = self.state.device.type
        self.amp_enabled = bool(amp) and device_type == "cuda"
        if amp and not self.amp_enabled:
            logger.info("amp=True is ignored on device %s: training in full precision.", self.state.device)
        self.g_scaler = torch.amp.GradScaler(device_type, enabled=self.amp_enabled)
        self.d_scaler = torch.amp.GradScaler(device_type, enabled=self.amp_enabled)

    def run(self) -> None:  # type: ignore[override]
        """Train until ``state.max_epochs``; a resumed trainer continues from its restored epoch.

        Unlike ``Trainer.run`` this creates no ``self.scaler``: the trainer's own ``g_scaler`` and
        ``d_scaler`` live as long as the trainer, so checkpoints can save and restore them.
        """
        Workflow.run(self)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.state.device.type, enabled=self.amp_enabled, **self.amp_kwargs)

    def _discriminate(self, image: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        """D's prediction on ``cat(image, label_map)`` along channels; the last element of a list output."""
        output = self.d_network(torch.cat([image, label_map.to(image.dtype)], dim=1))  # type: ignore[misc]
        return output[-1] if isinstance(output, (list, tuple)) else output

    def _discriminator_step(self, image: torch.Tensor, target: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """One D update on the real pair ``(image, target)`` and the detached fake pair; returns the D loss."""
        _set_requires_grad(self.d_network.parameters(), True)  # type: ignore[union-attr]
        self.d_optimizer.zero_grad(set_to_none=self.optim_set_to_none)  # type: ignore[union-attr]
        with self._autocast():
            d_loss = 0.5 * (
                self.adversarial_loss(self._discriminate(image, target), target_is_real=True, for_discriminator=True)
                + self.adversarial_loss(self._discriminate(image, fake), target_is_real=False, for_discriminator=True)
            )
        self.d_scaler.scale(d_loss).backward()
        self.d_scaler.step(self.d_optimizer)  # type: ignore[arg-type]
        self.d_scaler.update()
        return d_loss.detach()

    def _iteration(self, engine: ConditionalGanTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One pix2pix iteration (G forward, D step, G step); returns ``engine.state.output``.

        Args:
            engine: this trainer (ignite passes it explicitly).
            batchdata: the batch from the data loader.

        Raises:
            ValueError: when ``batchdata`` is None or the label does not fit the generator's channels.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        image, label = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        adversarial = engine.adversarial_weight > 0

        engine.g_network.train()
        if adversarial:
            engine.d_network.train()  # type: ignore[union-attr]
        with engine._autocast():
            logits = engine.g_network(image, *args, **kwargs)
            probs = engine.g_activation(logits)
        target = label_to_one_hot(label, logits.shape[1])
        engine.state.output = {CommonKeys.IMAGE: image, CommonKeys.LABEL: target, CommonKeys.PRED: logits}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        d_loss = engine._discriminator_step(image, target, probs.detach()) if adversarial else None

        engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with engine._autocast():
            sup_loss = engine.g_loss_function(logits if engine.supervised_on_logits else probs, target).mean()
            if adversarial:
                _set_requires_grad(engine.d_network.parameters(), False)  # type: ignore[union-attr]
                d_output = engine._discriminate(image, probs)
                adv_loss = engine.adversarial_loss(d_output, target_is_real=True, for_discriminator=False)
            else:
                adv_loss = torch.zeros_like(sup_loss)
            g_loss = engine.supervised_weight * sup_loss + engine.adversarial_weight * adv_loss
        engine.state.output.update(
            {
                CommonKeys.LOSS: g_loss.detach(),
                GanLossKeys.G_LOSS: g_loss.detach(),
                GanLossKeys.D_LOSS: torch.zeros_like(sup_loss).detach() if d_loss is None else d_loss,
                GanLossKeys.G_SUP_LOSS: sup_loss.detach(),
                GanLossKeys.G_ADV_LOSS: adv_loss.detach(),
            }
        )
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.g_scaler.scale(g_loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.g_scaler.step(engine.g_optimizer)
        engine.g_scaler.update()
        if adversarial:
            _set_requires_grad(engine.d_network.parameters(), True)  # type: ignore[union-attr]
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def _set_requires_grad(parameters: Iterator[torch.nn.Parameter], flag: bool) -> None:
    for parameter in parameters:
        parameter.requires_grad_(flag)
