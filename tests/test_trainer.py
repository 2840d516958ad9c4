"""ConditionalGanTrainer, its adversarial loss, its handlers and checkpoints on tiny synthetic 2D data (CPU)."""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from ignite.metrics import Average
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.handlers import MeanDice, StatsHandler, ValidationHandler, from_engine
from monai.losses import DiceCELoss, DiceLoss, PatchAdversarialLoss
from monai.networks.nets import Discriminator, PatchDiscriminator, UNet
from monai.transforms import Activationsd, AsDiscreted, Compose
from monai.utils import CommonKeys
from torch.utils.data import DataLoader

from hippogan.pipeline.bundle_training import EPOCH_LOG_COLUMNS, EpochLogHandler, TimeBudgetHandler
from hippogan.pipeline.checkpoint import (
    CheckpointHandler,
    load_checkpoint,
    load_network_weights,
    plain_config,
    resume,
    save_checkpoint,
)
from hippogan.pipeline.gan_trainer import (
    ConditionalGanTrainer,
    GanLossKeys,
    attach_progress_bar,
    default_adversarial_loss,
    default_optimizer,
    gan_losses,
    label_to_one_hot,
)

SIZE = 64
CLASSES = 3


def make_loader(n: int = 4, batch_size: int = 2, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """``n`` samples: image (1, 64, 64) in [0, 1), label (1, 64, 64) with values 0..2."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, CLASSES, (n, 1, SIZE, SIZE), generator=generator)
    data = [{"image": images[i], "label": labels[i]} for i in range(n)]
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle)


def make_generator(out_channels: int = CLASSES) -> UNet:
    return UNet(spatial_dims=2, in_channels=1, out_channels=out_channels, channels=(4, 8), strides=(2,))


def make_discriminator(out_channels: int = CLASSES, dropout: float = 0.0) -> Discriminator:
    return Discriminator(
        in_shape=(1 + out_channels, SIZE, SIZE), channels=(4, 8), strides=(2, 2), num_res_units=0, dropout=dropout
    )


def make_trainer(
    max_epochs: int = 1,
    out_channels: int = CLASSES,
    loader: DataLoader | None = None,
    with_d: bool = True,
    d_network: torch.nn.Module | None = None,
    seed: int = 0,
    **kwargs,
) -> ConditionalGanTrainer:
    torch.manual_seed(seed)
    g = make_generator(out_channels)
    d = (d_network or make_discriminator(out_channels)) if with_d else None
    return ConditionalGanTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=make_loader() if loader is None else loader,
        g_network=g,
        g_optimizer=default_optimizer(g.parameters()),
        d_network=d,
        d_optimizer=None if d is None else default_optimizer(d.parameters()),
        **kwargs,
    )


def clone_params(network: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in network.parameters()]


def same_params(network: torch.nn.Module, reference: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, r) for p, r in zip(network.parameters(), reference))


# ---------------------------------------------------------------- losses and helpers


def lsgan(prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """The removed ``hippogan.pipeline.losses.GANLoss()``: MSE against a tensor of 1 (real) or 0 (fake)."""
    return torch.nn.functional.mse_loss(prediction, torch.full_like(prediction, 1.0 if target_is_real else 0.0))


@pytest.mark.parametrize("shape", [(4, 1), (2, 1, 6, 6), (3, 1, 4, 4, 4)])
@pytest.mark.parametrize("target_is_real", [True, False])
def test_default_adversarial_loss_equals_the_former_gan_loss(shape, target_is_real):
    """MONAI's PatchAdversarialLoss (least squares, no activation) gives the values of the project's former
    GANLoss on random discriminator scores, for the discriminator step and for the generator step (real)."""
    prediction = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))
    loss = default_adversarial_loss()
    assert isinstance(loss, PatchAdversarialLoss)
    expected = lsgan(prediction, target_is_real)
    assert torch.allclose(loss(prediction, target_is_real=target_is_real, for_discriminator=True), expected)
    if target_is_real:
        assert torch.allclose(loss(prediction, target_is_real=True, for_discriminator=False), expected)


def test_monai_default_least_squares_is_not_the_paper_loss():
    """Without ``no_activation_leastsq`` MONAI puts a LeakyReLU on the scores: another loss, hence the flag."""
    prediction = -torch.ones(3, 1)
    monai_default = PatchAdversarialLoss(criterion="least_squares")
    value = monai_default(prediction, target_is_real=True, for_discriminator=True)
    assert not torch.allclose(value, lsgan(prediction, True))


@pytest.mark.parametrize(
    "label, num_classes, expected",
    [
        (torch.tensor([[[[0, 1, 2]]]]), 1, torch.tensor([[[[0.0, 1.0, 1.0]]]])),
        (torch.tensor([[[[0, 2]]]]), 3, torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 1.0]]]])),
        (torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]]), 2, torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])),
    ],
)
def test_label_to_one_hot(label, num_classes, expected):
    out = label_to_one_hot(label, num_classes)
    assert out.dtype == torch.float32 and torch.equal(out, expected)


@pytest.mark.parametrize(
    "label, num_classes, match",
    [
        (torch.tensor([[[[0, 3]]]]), 3, r"\[0, 2\]"),
        (torch.zeros(1, 2, 2, 2), 3, "1 channel"),
        (torch.zeros(4, 4), 2, "shape"),
    ],
)
def test_label_to_one_hot_errors(label, num_classes, match):
    with pytest.raises(ValueError, match=match):
        label_to_one_hot(label, num_classes)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"adversarial_weight": -1.0}, ">= 0"),
        ({"supervised_weight": 0.0, "adversarial_weight": 0.0}, "both 0"),
        ({"with_d": False}, "needs d_network"),
    ],
)
def test_trainer_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(**kwargs)


def test_default_optimizer_is_paper_nadam():
    optimizer = default_optimizer(torch.nn.Linear(2, 2).parameters())
    assert isinstance(optimizer, torch.optim.NAdam)
    assert optimizer.defaults["lr"] == 2e-4 and optimizer.defaults["betas"] == (0.5, 0.999)


# ---------------------------------------------------------------- training iterations


@pytest.mark.parametrize("out_channels", [1, CLASSES])
def test_one_epoch_finite_losses_and_output_keys(out_channels):
    trainer = make_trainer(out_channels=out_channels)
    trainer.run()
    out = trainer.state.output
    assert trainer.state.epoch == 1 and trainer.state.iteration == 2
    for key in (CommonKeys.IMAGE, CommonKeys.LABEL, CommonKeys.PRED, CommonKeys.LOSS, *GanLossKeys):
        assert key in out, key
    assert out[CommonKeys.PRED].shape == (2, out_channels, SIZE, SIZE)
    assert out[CommonKeys.LABEL].shape == (2, out_channels, SIZE, SIZE)
    losses = gan_losses(out)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert losses["d_loss"] > 0 and losses["g_adv_loss"] > 0
    expected = trainer.supervised_weight * losses["g_sup_loss"] + trainer.adversarial_weight * losses["g_adv_loss"]
    assert losses["g_loss"] == pytest.approx(expected, rel=1e-5)
    assert float(out[CommonKeys.LOSS]) == losses["g_loss"]


def test_discriminator_learns_but_gets_no_gradient_from_generator_step():
    trainer = make_trainer()
    g_before, d_before = clone_params(trainer.g_network), clone_params(trainer.d_network)
    seen: dict[str, list] = {"after_d_step": [], "after_g_backward": [], "frozen": []}

    @trainer.on(IterationEvents.LOSS_COMPLETED)
    def _after_d_step(engine):
        seen["after_d_step"] = [p.grad.clone() for p in engine.d_network.parameters()]

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def _after_g_backward(engine):
        seen["after_g_backward"] = [p.grad.clone() for p in engine.d_network.parameters()]
        seen["frozen"].append(not any(p.requires_grad for p in engine.d_network.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(seen["after_d_step"], seen["after_g_backward"]))
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in engine.g_network.parameters())

    trainer.run()
    assert seen["frozen"] == [True, True]
    assert not same_params(trainer.d_network, d_before)
    assert not same_params(trainer.g_network, g_before)
    assert all(p.requires_grad for p in trainer.d_network.parameters())


@pytest.mark.parametrize("pass_d", [True, False])
def test_generator_alone_leaves_discriminator_untouched(pass_d):
    d = make_discriminator()
    d_before = clone_params(d)
    trainer = make_trainer(adversarial_weight=0.0, with_d=pass_d, d_network=d)
    g_before = clone_params(trainer.g_network)
    trainer.run()
    assert same_params(d, d_before) and all(p.grad is None for p in d.parameters())
    assert not same_params(trainer.g_network, g_before)
    losses = gan_losses(trainer.state.output)
    assert losses["d_loss"] == 0 and losses["g_adv_loss"] == 0
    assert losses["g_loss"] == pytest.approx(100.0 * losses["g_sup_loss"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"g_loss_function": DiceLoss()},
        {"g_loss_function": DiceCELoss(softmax=True), "supervised_on_logits": True, "supervised_weight": 1.0},
        {"d_network": PatchDiscriminator(spatial_dims=2, channels=4, in_channels=1 + CLASSES, num_layers_d=2)},
        {"decollate": True},
    ],
    ids=["dice", "dicece_logits", "patch_discriminator", "decollate"],
)
def test_pluggable_parts_train(kwargs):
    trainer = make_trainer(**kwargs)
    trainer.run()
    losses = gan_losses(trainer.state.output)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_amp_is_ignored_on_cpu():
    trainer = make_trainer(amp=True)
    trainer.run()
    assert not trainer.amp_enabled and not trainer.g_scaler.is_enabled() and not trainer.d_scaler.is_enabled()
    assert all(torch.isfinite(torch.tensor(v)) for v in gan_losses(trainer.state.output).values())


def test_iteration_events_fire_in_order():
    trainer = make_trainer()
    fired: list[str] = []
    for event in IterationEvents:
        trainer.add_event_handler(event, lambda engine, name=event.name: fired.append(name))
    trainer.run()
    order = ["FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"]
    assert fired == order * trainer.state.iteration


def test_stats_handler_and_progress_bar(capsys):
    trainer = make_trainer()
    StatsHandler(name="hippogan.test_stats", output_transform=gan_losses).attach(trainer)
    total = StatsHandler(name="hippogan.test_stats", tag_name="total", output_transform=lambda out: out[CommonKeys.LOSS])
    total.attach(trainer)
    stream = io.StringIO()
    attach_progress_bar(trainer, persist=True, file=stream)
    trainer.run()
    logged = capsys.readouterr()
    text = logged.out + logged.err
    assert "g_loss" in text and "d_loss" in text and "total:" in text
    assert "g_loss" in stream.getvalue()


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_weights_only(tmp_path):
    trainer = make_trainer()
    trainer.run()
    config = {"lr": 2e-4, "betas": (0.5, 0.999), "data": tmp_path, 1: None}
    path = save_checkpoint(tmp_path / "run" / "ckpt.pt", trainer, config)
    raw = torch.load(path, weights_only=True)
    assert {"g_network", "d_network", "g_optimizer", "d_optimizer", "engine", "config"} <= set(raw)
    assert raw["engine"]["epoch"] == 1 and raw["engine"]["iteration"] == 2
    assert raw["config"] == {"lr": 2e-4, "betas": [0.5, 0.999], "data": str(tmp_path), "1": None}
    generator = make_generator()
    load_network_weights(path, generator)
    loaded, trained = generator.state_dict().values(), trainer.g_network.state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(loaded, trained))


def test_plain_config_rejects_non_mapping():
    with pytest.raises(ValueError, match="mapping"):
        plain_config([1, 2])


def test_atomic_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer()
    path = save_checkpoint(tmp_path / "last.pt", trainer, {"run": 1})
    before = path.read_bytes()

    def broken_save(obj, stream, *args, **kwargs):
        stream.write(b"PK\x03\x04 partial checkpoint")
        raise OSError("disk full")

    trainer.run()
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, trainer, {"run": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["config"] == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_resume_reproduces_uninterrupted_run(tmp_path):
    def loader() -> DataLoader:
        return make_loader(n=6, batch_size=2, shuffle=True)

    full = make_trainer(max_epochs=4, loader=loader())
    torch.manual_seed(1)
    full.run()

    first = make_trainer(max_epochs=2, loader=loader())
    torch.manual_seed(1)
    CheckpointHandler(tmp_path, config={"max_epochs": 2}).attach(first)
    first.run()

    second = make_trainer(max_epochs=4, loader=loader(), seed=123)
    epochs: list[int] = []
    second.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch))
    config = resume(second, tmp_path / "last.pt")
    assert config == {"max_epochs": 2} and second.state.epoch == 2 and second.state.iteration == 6
    assert second.g_optimizer.state_dict()["state"][0]["step"] == first.g_optimizer.state_dict()["state"][0]["step"]
    second.run()
    assert epochs == [3, 4] and second.state.iteration == full.state.iteration == 12
    for name in ("g_network", "d_network"):
        for a, b in zip(getattr(full, name).state_dict().values(), getattr(second, name).state_dict().values()):
            assert torch.equal(a, b), name


def test_resume_with_nothing_left_raises(tmp_path):
    trainer = make_trainer(max_epochs=1)
    trainer.run()
    path = save_checkpoint(tmp_path / "last.pt", trainer)
    with pytest.raises(ValueError, match="nothing left to train"):
        resume(make_trainer(max_epochs=1), path)


@pytest.mark.parametrize(
    "other, match",
    [
        (
            {"out_channels": 2},
            r"'g_network' does not fit the network: .*shape mismatches \[\S+ \(12, 3, 3, 3\) in file vs \(12, 2, 3, 3\)",
        ),
        ({"with_d": False, "adversarial_weight": 0.0}, r"unexpected keys \['d_network', 'd_optimizer'\]"),
    ],
)
def test_incompatible_checkpoint_raises_clear_error(tmp_path, other, match):
    trainer = make_trainer()
    path = save_checkpoint(tmp_path / "ckpt.pt", trainer)
    target = make_trainer(max_epochs=2, **other)
    g_before = clone_params(target.g_network)
    with pytest.raises(ValueError, match=match) as error:
        resume(target, path)
    assert str(path) in str(error.value)
    assert same_params(target.g_network, g_before) and target.state.epoch == 0


def test_unreadable_checkpoint_names_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_handler_best_on_train_metric(tmp_path):
    metric = Average(output_transform=lambda out: out[GanLossKeys.G_SUP_LOSS])
    trainer = make_trainer(max_epochs=3, key_train_metric={"sup": metric})
    per_epoch: list[float] = []
    handler = CheckpointHandler(tmp_path, metric_cmp_fn=lambda current, best: current < best)
    handler.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: per_epoch.append(float(e.state.metrics["sup"])))
    trainer.run()
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best"]["best_metric_epoch"] == 1 + per_epoch.index(min(per_epoch))
    assert best["engine"]["epoch"] == best["best"]["best_metric_epoch"]
    assert load_checkpoint(tmp_path / "last.pt")["engine"]["epoch"] == 3


def test_checkpoint_handler_best_on_validation_metric(tmp_path):
    trainer = make_trainer(max_epochs=2)
    post = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys=("pred", "label"), argmax=(True, False), to_onehot=(CLASSES, CLASSES)),
        ]
    )
    dice = MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))
    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=make_loader(n=2, seed=1),
        network=trainer.g_network,
        postprocessing=post,
        key_val_metric={"val_dice": dice},
    )
    ValidationHandler(interval=1, validator=evaluator).attach(trainer)
    handler = CheckpointHandler(tmp_path, metric_engine=evaluator)
    handler.attach(trainer)
    trainer.run()
    assert handler.key_metric_name == "val_dice" and handler.best_metric_epoch in (1, 2)
    assert load_checkpoint(tmp_path / "best.pt")["engine"]["epoch"] == handler.best_metric_epoch
    assert load_checkpoint(tmp_path / "last.pt")["best"] == handler.state_dict()


@pytest.mark.parametrize(
    "kwargs, match", [({"save_interval": 0}, "save_interval"), ({"best_filename": "last.pt"}, "differ")]
)
def test_checkpoint_handler_value_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CheckpointHandler(tmp_path, **kwargs)


def test_resume_restores_best_tracker(tmp_path):
    trainer = make_trainer(max_epochs=1)
    handler = CheckpointHandler(tmp_path)
    handler.best_metric, handler.best_metric_epoch = 0.7, 1
    handler.attach(trainer)
    trainer.run()
    restored = CheckpointHandler(Path(tmp_path))
    resume(make_trainer(max_epochs=2), tmp_path / "last.pt", checkpoint_handler=restored)
    assert restored.state_dict() == {"best_metric": 0.7, "best_metric_epoch": 1}


# ---------------------------------------------------------------- config handlers: time budget, epoch log


def test_time_budget_closes_the_epoch_then_stops(tmp_path):
    trainer = make_trainer(max_epochs=3, loader=make_loader(n=6, batch_size=2))  # 3 iterations an epoch
    budget = TimeBudgetHandler(minutes=1e-9)
    budget.attach(trainer)
    CheckpointHandler(tmp_path).attach(trainer)
    closed: list[int] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: closed.append(engine.state.iteration))
    trainer.run()
    assert budget.stopped_at == 1 and trainer.state.iteration == 1 and closed == [1]
    assert load_checkpoint(tmp_path / "last.pt")["engine"]["iteration"] == 1  # the cut epoch was saved


def test_time_budget_none_is_disabled():
    trainer = make_trainer(max_epochs=2)
    TimeBudgetHandler(minutes=None).attach(trainer)
    trainer.run()
    assert trainer.state.epoch == 2 and trainer.state.iteration == 4


@pytest.mark.parametrize("minutes", [0, -1.0])
def test_time_budget_value_error(minutes):
    with pytest.raises(ValueError, match="minutes must be > 0"):
        TimeBudgetHandler(minutes)


def test_epoch_log_one_line_and_one_row_per_epoch(tmp_path, caplog):
    path = tmp_path / "epochs.csv"
    trainer = make_trainer(max_epochs=2)
    EpochLogHandler(csv_path=path, name="hippogan.test_epoch_log").attach(trainer)
    with caplog.at_level(logging.INFO, logger="hippogan.test_epoch_log"):
        trainer.run()
    lines = [r.getMessage() for r in caplog.records if r.name == "hippogan.test_epoch_log"]
    assert len(lines) == 2 and lines[1].startswith("epoch 2: 2 iterations") and "samples/s, lr 0.0002" in lines[1]
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"] and list(rows[0]) == list(EPOCH_LOG_COLUMNS)
    assert all(int(r["iterations"]) == 2 and int(r["samples"]) == 4 for r in rows)
    assert all(math.isfinite(float(r[key])) and float(r[key]) > 0 for r in rows for key in ("g_loss", "d_loss"))

    resumed = make_trainer(max_epochs=3)  # a resumed run continues the file: epochs 1-2 kept, 3 added
    resume(resumed, save_checkpoint(tmp_path / "last.pt", trainer))
    EpochLogHandler(csv_path=path).attach(resumed)
    resumed.run()
    with path.open(newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epochs.csv", "last.pt"]  # no temporary file left
