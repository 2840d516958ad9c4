"""CPU training recipe for the shipped 2D Res-SEblock GAN (issue #5): train for a time budget, score a held-out fold.

The whole MSD subset (200 cases) is pre-processed once into ``(1, 48, 64, 64)`` ROI tensors held in memory;
training uses the sagittal planes of the training folds that hold hippocampus plus a share of the empty ones
(re-drawn every epoch), fed to :class:`~hippogan.pipeline.trainer.ConditionalGanTrainer` (the engine that
ships). The held-out fold is segmented volume by volume with :func:`~hippogan.transforms.slicing.sagittal_inferer`
and scored on the ROI grid with :func:`~hippogan.pipeline.metrics.evaluate_case` (MSD crops are only padded
into the ROI, so ROI and original-grid scores coincide).

Run from the repository root, e.g.::

    python benchmarks/cpu_recipe.py --width narrow --loss dicece --adv-weight 0.05 --minutes 8 \
        --out benchmarks/results/pilot_narrow_dicece

Writes ``<out>.json`` (recipe, per-epoch log, metrics, timings) and ``<out>_cases.csv`` (per-case metrics);
``--save-weights`` writes the generator as an fp16 state dict.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.data import set_track_meta
from monai.handlers import LrScheduleHandler
from monai.losses import DiceCELoss, DiceLoss
from monai.utils import set_determinism
from torch.optim.lr_scheduler import OneCycleLR

from hippogan.networks import ResSEGenerator, SegDiscriminator
from hippogan.pipeline.manifest import load_manifest, split_by_fold
from hippogan.pipeline.metrics import evaluate_case
from hippogan.pipeline.trainer import ConditionalGanTrainer, default_optimizer
from hippogan.transforms.augmentation import get_plane_augmentation
from hippogan.transforms.chains import get_preprocessing
from hippogan.transforms.keys import IMAGE, LABEL
from hippogan.transforms.slicing import sagittal_inferer, sagittal_slices

__all__ = [
    "WIDTHS", "generator_kwargs", "load_volumes", "SliceEpochs", "build_loss", "one_cycle", "plane_augmentation",
    "set_warmup_cosine_lr", "attach_time_budget", "evaluate", "main",
]

logger = logging.getLogger("cpu_recipe")

WIDTHS: dict[str, dict[str, list[int]]] = {
    "full": {"channels": [64, 128, 256, 512], "decoder_channels": [256, 128, 64, 32, 16]},
    "half": {"channels": [32, 64, 128, 256], "decoder_channels": [128, 64, 32, 16, 16]},
    "narrow": {"channels": [16, 32, 64, 128], "decoder_channels": [128, 64, 32, 16, 16]},
    "slim": {"channels": [16, 32, 64, 128], "decoder_channels": [64, 32, 32, 16, 16]},
}
"""Encoder/decoder widths of the candidate generators (ResNet34 depth 3-4-6-3 in all)."""


def generator_kwargs(width: str, out_channels: int = 3, context: int = 0, stem_skip: int = 0) -> dict:
    """Return the exact ``ResSEGenerator`` kwargs (JSON-able, for ``network_def``) of a ``WIDTHS`` preset;
    ``context`` sagittal neighbours on each side come in as extra channels (2.5D); ``stem_skip`` channels of
    full-resolution skip (0: the paper's decoder)."""
    if width not in WIDTHS:
        raise ValueError(f"width must be one of {sorted(WIDTHS)}, got {width!r}.")
    kwargs = {"spatial_dims": 2, "in_channels": 2 * context + 1, "out_channels": out_channels, **WIDTHS[width]}
    return kwargs | ({"stem_skip": stem_skip} if stem_skip else {})


def load_volumes(rows: Sequence[dict], context: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-process manifest rows (precropped mode) to ``image (N, 2 * context + 1, 48, 64, 64)`` float32 in
    [0, 1] and ``label (N, 1, 48, 64, 64)`` uint8 in {0, 1, 2}."""
    pre = get_preprocessing(mode="precropped", with_label=True, context=context)
    images, labels = [], []
    for row in rows:
        sample = pre({IMAGE: row[IMAGE], LABEL: row[LABEL]})
        images.append(sample[IMAGE].as_tensor().float())
        labels.append(sample[LABEL].as_tensor().round().to(torch.uint8))
    return torch.stack(images), torch.stack(labels)


class SliceEpochs:
    """Iterable of shuffled 2D batches ``{"image": (B, 1, 64, 64), "label": (B, 1, 64, 64)}``.

    Every epoch keeps all labelled sagittal planes and a fresh random ``empty_fraction`` of the empty ones.

    Args:
        images: ``(N, 1, X, Y, Z)`` ROI images.
        labels: ``(N, 1, X, Y, Z)`` ROI labels.
        batch_size: planes per batch (the last, smaller batch is dropped).
        empty_fraction: share of empty planes kept, in [0, 1].
        seed: seed of the plane draw and shuffle.
        augment: a dictionary transform applied to each plane pair ``{"image": (1, 64, 64), "label": (1, 64, 64)}``
            (e.g. :func:`~hippogan.transforms.augmentation.get_plane_augmentation`), or None.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, empty_fraction: float, seed: int = 0,
        augment: Callable | None = None,
    ) -> None:
        self.volumes = {IMAGE: images, LABEL: labels}
        self.augment = augment
        self.batch_size = batch_size
        self.empty_fraction = empty_fraction
        self.generator = torch.Generator().manual_seed(seed)
        self.n_planes = len(sagittal_slices(self.volumes, empty_fraction=empty_fraction, generator=self.generator)[IMAGE])

    def __len__(self) -> int:
        return self.n_planes // self.batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        planes = sagittal_slices(self.volumes, empty_fraction=self.empty_fraction, generator=self.generator)
        order = torch.randperm(len(planes[IMAGE]), generator=self.generator)
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch = {IMAGE: planes[IMAGE][index], LABEL: planes[LABEL][index].float()}
            if self.augment is not None:
                pairs = [self.augment({IMAGE: image, LABEL: label}) for image, label in zip(batch[IMAGE], batch[LABEL])]
                batch = {key: torch.stack([torch.as_tensor(pair[key]) for pair in pairs]) for key in (IMAGE, LABEL)}
            yield batch


class _DiceL1(torch.nn.Module):
    """Soft Dice (over the batch) plus ``l1_weight`` x mean absolute error, on probabilities."""

    def __init__(self, l1_weight: float) -> None:
        super().__init__()
        self.dice = DiceLoss(batch=True)
        self.l1_weight = l1_weight

    def forward(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(probs, target) + self.l1_weight * torch.nn.functional.l1_loss(probs, target)


def build_loss(name: str, l1_weight: float = 1.0) -> tuple[torch.nn.Module, bool]:
    """Return ``(g_loss_function, supervised_on_logits)`` for ``"l1"``, ``"dice_l1"`` or ``"dicece"``."""
    if name == "l1":
        return torch.nn.L1Loss(), False
    if name == "dice_l1":
        return _DiceL1(l1_weight), False
    if name == "dicece":
        return DiceCELoss(softmax=True, batch=True), True
    raise ValueError(f"loss must be l1, dice_l1 or dicece, got {name!r}.")


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, total_steps: int, warmup: float) -> OneCycleLR:
    """Cosine warm-up from ``lr / 25`` to ``lr`` over ``warmup`` of ``total_steps`` iterations, then cosine
    decay to ``lr / 100``; momentum (Nadam's beta1) is left alone."""
    return OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=warmup, anneal_strategy="cos",
        div_factor=25.0, final_div_factor=4.0, cycle_momentum=False,
    )


def plane_augmentation(seed: int) -> Callable:
    """The seeded random plane augmentation of ``--augment``; turns MONAI meta tracking off for this process
    (plain tensors through the random transforms: 3x faster), so call it after the volumes are pre-processed."""
    set_track_meta(False)
    augment = get_plane_augmentation()
    augment.set_random_state(seed)
    return augment


def set_warmup_cosine_lr(optimizers: Sequence[tuple[torch.optim.Optimizer | None, float]], progress: float,
                         warmup: float) -> None:
    """Set each ``(optimizer, peak lr)`` to a linear warm-up over the first ``warmup`` of the schedule, then a
    cosine decay, floored at 1% of the peak; ``progress`` in [0, 1] (clipped above). ``None`` optimizers are skipped."""
    p = min(progress, 1.0)
    factor = p / warmup if p < warmup else 0.5 * (1 + math.cos(math.pi * (p - warmup) / (1 - warmup)))
    for opt, lr in optimizers:
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = lr * max(factor, 0.01)


def attach_time_budget(trainer, seconds: float, elapsed: Callable[[], float], label: str) -> None:
    """Terminate ``trainer`` after the iteration at which ``elapsed()`` (seconds) passes ``seconds``."""

    @trainer.on(Events.ITERATION_COMPLETED)
    def _budget(engine) -> None:
        if elapsed() > seconds:
            logger.info("%s: time budget of %.1f min reached at iteration %d", label, seconds / 60, engine.state.iteration)
            engine.terminate()


def predict(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Segment ``(N, 1, X, Y, Z)`` volumes one by one: ``(N, X, Y, Z)`` argmax label maps (uint8)."""
    inferer = sagittal_inferer()
    net.eval()
    with torch.inference_mode():
        return torch.cat([inferer(image[None], net).argmax(1).to(torch.uint8) for image in images])


def evaluate(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, full: bool = False) -> list[dict]:
    """Per-case metrics of ``net`` on ROI volumes: binary and per-class; ``full=False`` computes Dice only."""
    preds = predict(net, images)
    cases = []
    for pred, label in zip(preds, labels[:, 0]):
        if full:
            cases.append(evaluate_case(pred, label))
        else:
            case = {}
            for key, lo, hi in (("dsc", 1, 2), ("dsc_class1", 1, 1), ("dsc_class2", 2, 2)):
                a = (pred >= lo) & (pred <= hi)
                b = (label >= lo) & (label <= hi)
                case[key] = float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))
            cases.append(case)
    return cases


def _summary(cases: list[dict]) -> dict[str, float]:
    return {key: float(np.nanmean([case[key] for case in cases])) for key in cases[0]}


def time_inference(net: torch.nn.Module, repeats: int = 10) -> dict[str, float]:
    """Seconds per MSD volume (48 sagittal 64x64 planes in one batch), median and minimum of ``repeats``."""
    net.eval()
    x = torch.rand(48, next(net.parameters()).shape[1], 64, 64)  # the stem convolution's input channels
    times = []
    with torch.inference_mode():
        net(x)
        for _ in range(repeats):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times))}


def compare_inference(widths: Sequence[str], threads: int, rounds: int = 5, repeats: int = 5) -> dict[str, dict]:
    """Time the inference of several ``WIDTHS`` generators side by side (rounds interleaved, so a noisy shared
    machine slows them alike): seconds per 48-plane volume, median and minimum over all rounds."""
    torch.set_num_threads(threads)
    nets = {width: ResSEGenerator(**generator_kwargs(width)) for width in widths}
    times: dict[str, list[float]] = {width: [] for width in widths}
    for _ in range(rounds):
        for width, net in nets.items():
            result = time_inference(net, repeats)
            times[width].append(result["min_s"])
    return {width: {"median_s": float(np.median(t)), "min_s": float(np.min(t)),
                    "parameters": sum(p.numel() for p in nets[width].parameters())} for width, t in times.items()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", default="data_manifests/msd_hippocampus.csv")
    p.add_argument("--dataset-dir", default="../shared/data/msd_hippocampus")
    p.add_argument("--width", default="narrow", choices=sorted(WIDTHS))
    p.add_argument("--loss", default="dicece", choices=("l1", "dice_l1", "dicece"))
    p.add_argument("--sup-weight", type=float, default=None, help="default: 100 for l1, 1 otherwise")
    p.add_argument("--l1-weight", type=float, default=1.0, help="L1 share inside dice_l1")
    p.add_argument("--adv-weight", type=float, default=None, help="default: 1 for l1, 0.05 otherwise")
    p.add_argument("--d-channels", type=int, nargs=4, default=[32, 64, 128, 256])
    p.add_argument("--empty-fraction", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--d-lr", type=float, default=2e-4)
    p.add_argument("--lr-schedule", default="cosine", choices=("none", "cosine"))
    p.add_argument("--warmup", type=float, default=0.03, help="share of the schedule with linear warm-up")
    p.add_argument("--context", type=int, default=0, help="sagittal neighbours on each side as channels (2.5D)")
    p.add_argument("--augment", action="store_true", help="random in-plane affine + intensity jitter of the planes")
    p.add_argument("--stem-skip", type=int, default=0, help="channels of the full-resolution skip (0: the paper)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--minutes", type=float, default=8.0, help="training time budget (hard cap)")
    p.add_argument("--epochs", type=int, default=None, help="schedule over this many epochs (else over --minutes)")
    p.add_argument("--val-every", type=int, default=1, help="epochs between validations (and at the end)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--inference-threads", type=int, default=2, help="torch threads for the inference timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare-widths", nargs="+", default=None, choices=sorted(WIDTHS),
                   help="only time the inference of these generators side by side (--inference-threads) and exit")
    p.add_argument("--out", required=True, help="output prefix, e.g. benchmarks/results/pilot_a")
    p.add_argument("--save-weights", default=None, help="write the generator as an fp16 state dict here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one recipe; see the module docstring."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.compare_widths:
        timings = compare_inference(args.compare_widths, args.inference_threads)
        for width, row in timings.items():
            logger.info("%s: %.3f s/volume median, %.3f min, %d parameters", width, row["median_s"], row["min_s"],
                        row["parameters"])
        Path(args.out).with_suffix(".json").write_text(json.dumps({"threads": args.inference_threads, **timings}, indent=1))
        return 0
    torch.set_num_threads(args.threads)
    set_determinism(args.seed)
    sup_weight = args.sup_weight if args.sup_weight is not None else (100.0 if args.loss == "l1" else 1.0)
    adv_weight = args.adv_weight if args.adv_weight is not None else (1.0 if args.loss == "l1" else 0.05)

    start = time.perf_counter()
    train_rows, val_rows = split_by_fold(load_manifest(args.manifest, args.dataset_dir), args.fold)
    train_img, train_lab = load_volumes(train_rows, args.context)
    val_img, val_lab = load_volumes(val_rows, args.context)
    augment = plane_augmentation(args.seed) if args.augment else None
    data = SliceEpochs(train_img, train_lab, args.batch_size, args.empty_fraction, seed=args.seed, augment=augment)
    logger.info(
        "data: %d train / %d val cases, %d planes per epoch, %d batches; loaded in %.1f s",
        len(train_rows), len(val_rows), data.n_planes, len(data), time.perf_counter() - start,
    )

    g_kwargs = generator_kwargs(args.width, context=args.context, stem_skip=args.stem_skip)
    g_net = ResSEGenerator(**g_kwargs)
    d_kwargs = {"spatial_dims": 2, "in_channels": g_kwargs["in_channels"] + g_kwargs["out_channels"], "channels": args.d_channels}
    d_net = SegDiscriminator(**d_kwargs) if adv_weight > 0 else None
    g_opt = default_optimizer(g_net.parameters(), lr=args.lr)
    d_opt = default_optimizer(d_net.parameters(), lr=args.d_lr) if d_net is not None else None
    loss, on_logits = build_loss(args.loss, args.l1_weight)
    budget = 60.0 * args.minutes
    max_epochs = args.epochs or 10_000
    total_iters = (args.epochs or 0) * len(data)
    trainer = ConditionalGanTrainer(
        device="cpu", max_epochs=max_epochs, train_data_loader=data, g_network=g_net, g_optimizer=g_opt,
        d_network=d_net, d_optimizer=d_opt, g_loss_function=loss, supervised_weight=sup_weight,
        adversarial_weight=adv_weight, supervised_on_logits=on_logits,
    )
    history: list[dict] = []
    clock = {"train_start": time.perf_counter(), "eval_s": 0.0, "epoch_start": time.perf_counter()}

    def progress(engine) -> float:
        if total_iters:
            return engine.state.iteration / total_iters
        return (time.perf_counter() - clock["train_start"] - clock["eval_s"]) / budget

    if args.lr_schedule == "cosine" and args.epochs:
        # the schedule of configs/train_cpu.yaml: one-cycle cosine over all iterations, stepped per iteration
        for opt, lr in ((g_opt, args.lr), (d_opt, args.d_lr)):
            if opt is not None:
                LrScheduleHandler(one_cycle(opt, lr, total_iters, args.warmup), epoch_level=False).attach(trainer)
    elif args.lr_schedule == "cosine":

        @trainer.on(Events.ITERATION_STARTED)
        def _schedule(engine) -> None:  # time-based warm-up + cosine, for fixed-minute pilots
            set_warmup_cosine_lr(((g_opt, args.lr), (d_opt, args.d_lr)), progress(engine), args.warmup)

    attach_time_budget(trainer, budget, lambda: time.perf_counter() - clock["train_start"] - clock["eval_s"], "training")

    @trainer.on(Events.EPOCH_STARTED)
    def _epoch_start(engine) -> None:
        clock["epoch_start"] = time.perf_counter()

    def _log_epoch(engine) -> None:
        if history and history[-1]["iteration"] == engine.state.iteration:
            return
        seconds = time.perf_counter() - clock["epoch_start"]
        done = engine.state.iteration - (engine.state.epoch - 1) * len(data)
        out = engine.state.output
        row = {
            "epoch": engine.state.epoch, "iteration": engine.state.iteration, "iterations": done, "epoch_s": seconds,
            "planes_per_s": done * args.batch_size / seconds, "lr": g_opt.param_groups[0]["lr"],
            "g_sup_loss": float(out["g_sup_loss"]), "g_adv_loss": float(out["g_adv_loss"]),
            "d_loss": float(out["d_loss"]),
        }
        message = "epoch %d: %d it, %.0f s (%.1f planes/s), lr %.2e, sup %.4f adv %.4f d %.4f" % (
            row["epoch"], done, seconds, row["planes_per_s"], row["lr"], row["g_sup_loss"], row["g_adv_loss"],
            row["d_loss"],
        )
        if engine.state.epoch % args.val_every == 0 or engine.should_terminate or engine.state.epoch >= max_epochs:
            t0 = time.perf_counter()
            dice = _summary(evaluate(g_net, val_img, val_lab))
            clock["eval_s"] += time.perf_counter() - t0
            row.update({f"val_{k}": v for k, v in dice.items()})
            message += " | val dsc %.4f (a %.4f, p %.4f)" % (dice["dsc"], dice["dsc_class1"], dice["dsc_class2"])
        history.append(row)
        logger.info(message)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, _log_epoch)
    trainer.add_event_handler(Events.TERMINATE, _log_epoch)
    trainer.run()
    train_s = time.perf_counter() - clock["train_start"] - clock["eval_s"]

    cases = evaluate(g_net, val_img, val_lab, full=True)
    summary = _summary(cases)
    torch.set_num_threads(args.inference_threads)
    inference = time_inference(g_net)
    logger.info("final (fold %d, ROI grid): %s", args.fold, {k: round(v, 4) for k, v in summary.items()})
    logger.info("training %.1f min; inference %.3f s/volume (median, %d threads)", train_s / 60, inference["median_s"], args.inference_threads)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "recipe": vars(args) | {"sup_weight": sup_weight, "adv_weight": adv_weight},
        "generator_kwargs": g_kwargs, "discriminator_kwargs": d_kwargs if d_net is not None else None,
        "generator_parameters": sum(p.numel() for p in g_net.parameters()),
        "data": {"train_cases": len(train_rows), "val_fold": args.fold, "val_cases": len(val_rows),
                 "planes_per_epoch": data.n_planes, "metrics_grid": "ROI (48x64x64, 1 mm; MSD crops only padded)"},
        "hardware": {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "inference_threads": args.inference_threads, "torch": torch.__version__},
        "train_minutes": train_s / 60, "epochs": history[-1]["epoch"] if history else 0,
        "inference_s_per_volume": inference, "val_metrics": summary, "history": history,
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    with open(f"{out}_cases.csv", "w") as f:
        keys = list(cases[0])
        f.write("subject_id," + ",".join(keys) + "\n")
        for row, case in zip(val_rows, cases):
            f.write(row["subject_id"] + "," + ",".join(f"{case[k]:.5g}" for k in keys) + "\n")
    if args.save_weights:
        Path(args.save_weights).parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in g_net.state_dict().items()}, args.save_weights)
        logger.info("generator weights (fp16) -> %s", args.save_weights)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
