"""Accuracy benchmark (issue #5): the Res-SEblock GAN against its ablations and MONAI baselines, k-fold or one fold.

Protocols (CPU, budgeted):

- ``--cv K``: K-fold cross-validation over the 200 cases. CV fold k holds out the manifest folds ``f`` with
  ``f % K == k`` (the manifest has 10 folds of 20 cases; K=5 holds out 40 cases per fold and trains on 160), so every
  case is scored once per model. ``--folds`` picks some of the K folds.
- without ``--cv``: train on every manifest fold but ``--fold`` (default 0: 180 cases), score that fold (20 cases).

Every model trains in its own process with one torch thread under the same budget: a wall-time budget
(``--minutes``; warm-up + cosine learning rate over that time) and, optionally, at most ``--epochs`` epochs over the
same sagittal planes (those of :class:`cpu_recipe.SliceEpochs`: all labelled planes plus a re-drawn 10% of the
empty ones, batch 16). The 3D UNet trains on whole ``48x64x64`` ROI volumes (batch ``--batch-size-3d``) for the same
wall time. All models train with the engine that ships (:class:`~hippogan.pipeline.trainer.ConditionalGanTrainer`,
``adversarial_weight=0`` and no discriminator for the supervised ones), ``DiceCELoss(softmax=True, batch=True)`` on
logits, Nadam (beta1 0.5), lr 1e-3 (D 2e-4), 3 output classes. Models (``MODELS``):

- ``resse_gan``: the narrow Res-SEblock GAN (the paper's networks; adversarial weight 0.05, ``SegDiscriminator``
  16-32-64-128); ``resse_sup``: the same generator without the discriminator (supervised loss alone);
- ``ours``: the shipped recipe: ``resse_sup`` plus a 16-channel full-resolution skip (``stem_skip=16``) and random
  plane augmentation (:func:`~hippogan.transforms.augmentation.get_plane_augmentation`), no discriminator;
  ``ours_gan``: the same with the discriminator (the Res-SEblock GAN as we would train it);
  ``attention_unet_aug``: MONAI's AttentionUnet with the same augmentation;
- ``gan``, ``res_gan``, ``se_gan``: the paper's ablations (:data:`hippogan.networks.ABLATION_VARIANTS`), as GANs;
- ``unet2d``, ``attention_unet``: MONAI ``UNet`` / ``AttentionUnet`` on the same planes, supervised;
- ``unet3d``: MONAI ``UNet`` (3D) on whole volumes, supervised.

Run several models (and folds) as a queue of one process per (model, fold), ``--jobs`` at a time, then merge::

    nohup python benchmarks/bench_accuracy.py --models resse_sup unet2d --cv 5 --epochs 10 --minutes 60 \
        --jobs 2 --out benchmarks/results/cv5/accuracy > /tmp/cv5.log 2>&1 &
    python benchmarks/bench_accuracy.py --collect --cv 5 --out benchmarks/results/cv5/accuracy

A run writes ``<out>_<model>[_fold<k>].json`` (budget, history, timings, metrics) and ``..._cases.csv`` (``_fold<k>``
with ``--cv``); ``--collect`` writes ``<out>.md`` and ``<out>.csv``: per model the mean and std over all scored
cases, the std of the fold means (``--cv``) and the paired per-case difference of binary DSC to ``--paired-with``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ignite.engine import Events
from monai.losses import DiceCELoss
from monai.networks.nets import AttentionUnet, UNet
from monai.utils import set_determinism
from scipy.stats import wilcoxon

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_recipe import (  # noqa: E402
    SliceEpochs, attach_time_budget, evaluate, generator_kwargs, load_volumes, plane_augmentation, set_warmup_cosine_lr,
)

from hippogan.networks import ABLATION_VARIANTS, ResSEGenerator, SegDiscriminator  # noqa: E402
from hippogan.pipeline.manifest import load_manifest, split_by_fold  # noqa: E402
from hippogan.pipeline.metrics import evaluate_case  # noqa: E402
from hippogan.pipeline.trainer import ConditionalGanTrainer, default_optimizer  # noqa: E402
from hippogan.transforms.keys import IMAGE, LABEL  # noqa: E402

__all__ = ["MODELS", "VolumeEpochs", "build_model", "evaluate_3d", "train_one", "collect", "main"]

logger = logging.getLogger("bench_accuracy")

_UNET = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2)}
MODELS: dict[str, dict] = {
    "ours": {"label": "Res-SEblock generator + full-res skip + augmentation, no D (ours, shipped)", "family": "resse",
             "variant": "Res SEblock GAN", "adv": 0.0, "stem_skip": 16, "augment": True},
    "ours_gan": {"label": "the same + conditional discriminator (Res-SEblock GAN)", "family": "resse",
                 "variant": "Res SEblock GAN", "adv": 0.05, "stem_skip": 16, "augment": True},
    "attention_unet_aug": {"label": "MONAI AttentionUnet 2D + augmentation", "family": "attention_unet", "adv": 0.0,
                           "augment": True},
    "resse_gan": {"label": "Res-SEblock GAN (the paper's networks)", "family": "resse", "variant": "Res SEblock GAN", "adv": 0.05},
    "resse_sup": {"label": "Res-SEblock generator, no discriminator", "family": "resse", "variant": "Res SEblock GAN", "adv": 0.0},
    "gan": {"label": "GAN (plain encoder, no SE)", "family": "resse", "variant": "GAN", "adv": 0.05},
    "res_gan": {"label": "Res GAN (residual, no SE)", "family": "resse", "variant": "Res GAN", "adv": 0.05},
    "se_gan": {"label": "SEblock GAN (plain, SE)", "family": "resse", "variant": "SEblock GAN", "adv": 0.05},
    "unet2d": {"label": "MONAI UNet 2D", "family": "unet", "adv": 0.0},
    "attention_unet": {"label": "MONAI AttentionUnet 2D", "family": "attention_unet", "adv": 0.0},
    "unet3d": {"label": "MONAI UNet 3D (whole volume)", "family": "unet3d", "adv": 0.0},
}
"""Benchmark models: table label, network family, ablation variant, adversarial weight, full-res skip channels,
plane augmentation."""


def build_model(name: str) -> tuple[torch.nn.Module, dict]:
    """Return ``(network, kwargs)`` of model ``name``: ``(B, 1, 64, 64)`` (3D: ``(B, 1, 48, 64, 64)``) -> 3 logits."""
    spec = MODELS[name]
    if spec["family"] == "resse":
        kwargs = generator_kwargs("narrow", stem_skip=spec.get("stem_skip", 0)) | ABLATION_VARIANTS[spec["variant"]]
        return ResSEGenerator(**kwargs), kwargs
    if spec["family"] == "attention_unet":
        kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, **_UNET}
        return AttentionUnet(**kwargs), kwargs
    dims = 3 if spec["family"] == "unet3d" else 2
    kwargs = {"spatial_dims": dims, "in_channels": 1, "out_channels": 3, **_UNET, "num_res_units": 2}
    return UNet(**kwargs), kwargs


class VolumeEpochs:
    """Iterable of shuffled whole-volume batches ``{"image": (B, 1, 48, 64, 64), "label": (B, 1, 48, 64, 64)}``.

    Args:
        images: ``(N, 1, X, Y, Z)`` ROI images.
        labels: ``(N, 1, X, Y, Z)`` ROI labels.
        batch_size: volumes per batch (the last, smaller batch is dropped).
        seed: seed of the shuffle.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.n_planes = len(images)  # volumes per epoch (named like SliceEpochs.n_planes)

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(len(self.images), generator=self.generator)
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield {IMAGE: self.images[index], LABEL: self.labels[index].float()}


def evaluate_3d(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Per-case :func:`evaluate_case` metrics of a 3D net, one whole-volume ``(1, 1, 48, 64, 64)`` forward each."""
    net.eval()
    cases = []
    with torch.inference_mode():
        for image, label in zip(images, labels[:, 0]):
            pred = net(image[None]).argmax(1)[0].to(torch.uint8)
            cases.append(evaluate_case(pred, label))
    return cases


def val_folds(args: argparse.Namespace) -> list[int]:
    """Manifest folds held out by ``args.fold``: ``[fold]``, or with ``--cv K`` every manifest fold ``f % K == fold``."""
    if not args.cv:
        return [args.fold]
    present = sorted({int(row["fold"]) for row in load_manifest(args.manifest, args.dataset_dir)})
    if len(present) % args.cv or not 0 <= args.fold < args.cv:
        raise ValueError(f"--cv {args.cv} --fold {args.fold}: the manifest's {len(present)} folds do not group into "
                         f"{args.cv} equal CV folds, or the fold is not in 0..{args.cv - 1}")
    return [f for f in present if f % args.cv == args.fold]


def run_prefix(out: str, model: str, fold: int | None) -> str:
    """Output prefix of one run: ``<out>_<model>`` (one fold) or ``<out>_<model>_fold<k>`` (``--cv``)."""
    return f"{out}_{model}" if fold is None else f"{out}_{model}_fold{fold}"


def train_one(args: argparse.Namespace) -> dict:
    """Train and score ``args.model``; write ``<out>_<model>.json`` and ``_cases.csv``; return the result dict."""
    torch.set_num_threads(args.threads)
    set_determinism(args.seed)
    name, spec = args.model, MODELS[args.model]
    start = time.perf_counter()
    train_rows, val_rows = split_by_fold(load_manifest(args.manifest, args.dataset_dir), val_folds(args))
    train_img, train_lab = load_volumes(train_rows)
    val_img, val_lab = load_volumes(val_rows)
    is_3d = spec["family"] == "unet3d"
    if is_3d:
        data = VolumeEpochs(train_img, train_lab, args.batch_size_3d, seed=args.seed)
    else:
        augment = plane_augmentation(args.seed) if spec.get("augment") else None
        data = SliceEpochs(train_img, train_lab, args.batch_size, args.empty_fraction, seed=args.seed, augment=augment)
    batch_size = args.batch_size_3d if is_3d else args.batch_size
    logger.info("%s: %d train / %d val cases, %d %s per epoch; loaded in %.1f s", name, len(train_rows),
                len(val_rows), data.n_planes, "volumes" if is_3d else "planes", time.perf_counter() - start)

    g_net, g_kwargs = build_model(name)
    adv = spec["adv"]
    d_kwargs = {"spatial_dims": 2, "in_channels": 1 + 3, "channels": list(args.d_channels)}
    d_net = SegDiscriminator(**d_kwargs) if adv > 0 else None
    g_opt = default_optimizer(g_net.parameters(), lr=args.lr)
    d_opt = default_optimizer(d_net.parameters(), lr=args.d_lr) if d_net is not None else None
    trainer = ConditionalGanTrainer(
        device="cpu", max_epochs=args.epochs or 10_000, train_data_loader=data, g_network=g_net, g_optimizer=g_opt,
        d_network=d_net, d_optimizer=d_opt, g_loss_function=DiceCELoss(softmax=True, batch=True),
        supervised_weight=1.0, adversarial_weight=adv, supervised_on_logits=True,
    )
    budget = 60.0 * args.minutes
    clock = {"start": time.perf_counter(), "epoch_start": time.perf_counter()}
    history: list[dict] = []

    @trainer.on(Events.ITERATION_STARTED)
    def _schedule(engine) -> None:  # warm-up + cosine over the wall-time budget (or the epochs, if they end first)
        p = (time.perf_counter() - clock["start"]) / budget
        if args.epochs:
            p = max(p, (engine.state.iteration - 1) / (args.epochs * len(data)))
        set_warmup_cosine_lr(((g_opt, args.lr), (d_opt, args.d_lr)), p, args.warmup)

    attach_time_budget(trainer, budget, lambda: time.perf_counter() - clock["start"], name)

    @trainer.on(Events.EPOCH_STARTED)
    def _epoch_start(engine) -> None:
        clock["epoch_start"] = time.perf_counter()

    def _log_epoch(engine) -> None:
        if history and history[-1]["iteration"] == engine.state.iteration:
            return
        seconds = time.perf_counter() - clock["epoch_start"]
        done = engine.state.iteration - (engine.state.epoch - 1) * len(data)
        out = engine.state.output
        history.append({"epoch": engine.state.epoch, "iteration": engine.state.iteration, "epoch_s": seconds,
                        "samples_per_s": done * batch_size / max(seconds, 1e-9), "lr": g_opt.param_groups[0]["lr"],
                        "g_sup_loss": float(out["g_sup_loss"]), "d_loss": float(out["d_loss"])})
        logger.info("%s epoch %d: %d it, %.0f s (%.1f samples/s), lr %.2e, sup %.4f", name, engine.state.epoch, done,
                    seconds, history[-1]["samples_per_s"], history[-1]["lr"], history[-1]["g_sup_loss"])

    trainer.add_event_handler(Events.EPOCH_COMPLETED, _log_epoch)
    trainer.add_event_handler(Events.TERMINATE, _log_epoch)
    trainer.run()
    train_s = time.perf_counter() - clock["start"]
    iterations = trainer.state.iteration

    t0 = time.perf_counter()
    cases = evaluate_3d(g_net, val_img, val_lab) if is_3d else evaluate(g_net, val_img, val_lab, full=True)
    eval_s = time.perf_counter() - t0
    summary = {k: float(np.nanmean([c[k] for c in cases])) for k in cases[0]}
    logger.info("%s final (fold %d): dsc %.4f, hd95 %.2f, anterior %.4f, posterior %.4f", name, args.fold,
                summary["dsc"], summary["hd95"], summary["dsc_class1"], summary["dsc_class2"])
    result = {
        "model": name, "label": spec["label"], "network_kwargs": g_kwargs,
        "discriminator_kwargs": d_kwargs if d_net is not None else None, "adversarial_weight": adv,
        "parameters": sum(p.numel() for p in g_net.parameters()),
        "d_parameters": sum(p.numel() for p in d_net.parameters()) if d_net is not None else 0,
        "budget": {"minutes": args.minutes, "max_epochs": args.epochs, "threads": args.threads,
                   "batch_size": batch_size, "unit": "volumes" if is_3d else "planes"},
        "recipe": {k: v for k, v in vars(args).items() if k not in ("models", "collect", "model")},
        "data": {"train_cases": len(train_rows), "val_fold": args.fold, "val_manifest_folds": val_folds(args),
                 "val_cases": len(val_rows), "samples_per_epoch": data.n_planes,
                 "protocol": f"{args.cv}-fold cross-validation, fold {args.fold}" if args.cv
                 else f"one fold held out (manifest fold {args.fold}), not cross-validation"},
        "hardware": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "iterations": iterations, "epochs": iterations / len(data), "train_s": train_s,
        "samples_per_s": iterations * batch_size / train_s, "eval_s": eval_s,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "val_metrics": summary, "history": history,
    }
    prefix = Path(run_prefix(args.out, name, args.fold if args.cv else None))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=1))
    keys = list(cases[0])
    lines = ["subject_id,fold," + ",".join(keys)]
    lines += [f"{row['subject_id']},{args.fold}," + ",".join(f"{case[k]:.5g}" for k in keys)
              for row, case in zip(val_rows, cases)]
    Path(f"{prefix}_cases.csv").write_text("\n".join(lines) + "\n")
    return result


_COLUMNS = ("dsc", "sen", "ppv", "jaccard", "hd95", "dsc_class1", "dsc_class2")


def _model_runs(out: str, name: str, cv: int | None) -> tuple[list[dict], pd.DataFrame] | None:
    """The run JSONs and the concatenated per-case table (with a ``fold`` column) of one model, or None."""
    paths = sorted(Path(out).parent.glob(f"{Path(out).name}_{name}_fold*.json")) if cv else [Path(f"{out}_{name}.json")]
    paths = [path for path in paths if path.exists()]
    if not paths:
        return None
    runs = [json.loads(path.read_text()) for path in paths]
    cases = []
    for path, run in zip(paths, runs):
        frame = pd.read_csv(path.with_name(path.stem + "_cases.csv"))
        if "fold" not in frame:
            frame.insert(1, "fold", run["data"]["val_fold"])
        cases.append(frame)
    return runs, pd.concat(cases, ignore_index=True)


def _row(name: str, label: str, runs: list[dict], cases: pd.DataFrame) -> dict:
    fold_means = cases.groupby("fold")["dsc"].mean()
    return {"model": name, "label": label, "folds": len(fold_means), "cases": len(cases),
            "epochs": float(np.mean([r["epochs"] for r in runs])),
            "train_min": float(np.mean([r.get("train_s", 60 * r.get("train_minutes", 0)) / 60 for r in runs])),
            "samples_per_s": float(np.mean([r.get("samples_per_s", np.nan) for r in runs])),
            "unit": runs[0].get("budget", {}).get("unit", "planes"),
            "parameters": runs[0].get("parameters", runs[0].get("generator_parameters")),
            "d_parameters": runs[0].get("d_parameters"),
            "dsc_fold_std": float(fold_means.std(ddof=1)) if len(fold_means) > 1 else float("nan"),
            "per_case": cases.set_index("subject_id")["dsc"],
            **{k: (float(cases[k].mean()), float(cases[k].std(ddof=0))) for k in _COLUMNS}}


def collect(out: str, reference: str | None = None, cv: int | None = None, paired_with: str = "resse_gan") -> list[dict]:
    """Merge the runs of every model found into ``<out>.md`` and ``<out>.csv`` (see the module docstring)."""
    rows = []
    for name in MODELS:
        found = _model_runs(out, name, cv)
        if found is not None:
            rows.append(_row(name, MODELS[name]["label"], *found))
    if reference and not cv and Path(f"{reference}.json").exists():
        run = json.loads(Path(f"{reference}.json").read_text())
        run["samples_per_s"] = float(np.mean([h["planes_per_s"] for h in run["history"]]))
        cases = pd.read_csv(f"{reference}_cases.csv")
        cases.insert(1, "fold", run["data"].get("val_fold", 0))
        rows.append(_row(Path(reference).name, "reference: committed shipped run (other batch conditions)", [run], cases))
    if not rows:
        raise ValueError(f"no model results under {out}_<model>{'_fold<k>' if cv else ''}.json (models: {', '.join(MODELS)})")
    base = next((r["per_case"] for r in rows if r["model"] == paired_with), None)
    for r in rows:
        if base is not None:
            diff = (r["per_case"] - base).dropna()
            r["delta_dsc"] = float(diff.mean())
            r["p_wilcoxon"] = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    csv = ["model,label,folds,cases,epochs,train_min,samples_per_s,unit,parameters,d_parameters,"
           + ",".join(f"{k}_mean,{k}_std" for k in _COLUMNS) + f",dsc_fold_std,delta_dsc_vs_{paired_with},p_wilcoxon"]
    md = [f"| model | folds (cases) | epochs | train min | samples/s | G params | binary DSC | DSC std of fold means | SEN "
          f"| PPV | Jaccard | HD95 mm | anterior DSC | posterior DSC | ΔDSC vs {paired_with} (p) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        csv.append(f"{r['model']},\"{r['label']}\",{r['folds']},{r['cases']},{r['epochs']:.2f},{r['train_min']:.2f},"
                   f"{r['samples_per_s']:.2f},{r['unit']},{r['parameters']},{r['d_parameters'] if r['d_parameters'] is not None else ''},"
                   + ",".join(f"{r[k][0]:.5g},{r[k][1]:.5g}" for k in _COLUMNS)
                   + f",{r['dsc_fold_std']:.3g},{r.get('delta_dsc', float('nan')):.5g},{r.get('p_wilcoxon', float('nan')):.3g}")
        cells = [f"{r[k][0]:.3f} ± {r[k][1]:.3f}" if k != "hd95" else f"{r[k][0]:.2f} ± {r[k][1]:.2f}" for k in _COLUMNS]
        fold_std = f"{r['dsc_fold_std']:.3f}" if r["folds"] > 1 else "-"
        md.append(f"| {r['label']} (`{r['model']}`) | {r['folds']} ({r['cases']}) | {r['epochs']:.1f} | {r['train_min']:.1f} | "
                  f"{r['samples_per_s']:.1f} {r['unit']} | {r['parameters']:,} | {cells[0]} | {fold_std} | "
                  + " | ".join(cells[1:])
                  + (f" | {r['delta_dsc']:+.3f} ({r['p_wilcoxon']:.2g}) |" if "delta_dsc" in r else " | |"))
    Path(f"{out}.csv").write_text("\n".join(csv) + "\n")
    table = "\n".join(md) + "\n"
    path = Path(f"{out}.md")
    text = path.read_text() if path.exists() else ""
    begin, end = "<!-- table -->", "<!-- /table -->"
    if begin in text and end in text:  # keep the hand-written notes around the generated table
        text = text[: text.index(begin) + len(begin)] + "\n" + table + text[text.index(end):]
    else:
        text = f"# Accuracy benchmark (issue #5)\n\n{begin}\n{table}{end}\n"
    path.write_text(text)
    logger.info("%d models -> %s.md, %s.csv\n%s", len(rows), out, out, table)
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), help="train and score this one model in this process")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), help="run these models, one process per (model, fold)")
    p.add_argument("--jobs", type=int, default=None, help="processes at a time with --models (default: all at once)")
    p.add_argument("--collect", action="store_true", help="merge the per-model results into <out>.md and <out>.csv")
    p.add_argument("--reference", default="benchmarks/results/final_fold0",
                   help="committed cpu_recipe run added to the table as a reference row ('' for none)")
    p.add_argument("--manifest", default="data_manifests/msd_hippocampus.csv")
    p.add_argument("--dataset-dir", default="../shared/data/msd_hippocampus")
    p.add_argument("--fold", type=int, default=0, help="the held-out fold (a CV fold with --cv, else a manifest fold)")
    p.add_argument("--cv", type=int, default=None, help="K-fold cross-validation: CV fold k = manifest folds f %% K == k")
    p.add_argument("--folds", type=int, nargs="+", default=None, help="with --cv and --models: these CV folds (default all)")
    p.add_argument("--paired-with", default="resse_gan", help="model of the paired per-case DSC comparison")
    p.add_argument("--minutes", type=float, default=20.0, help="wall-time training budget per model")
    p.add_argument("--epochs", type=int, default=None, help="also stop after this many epochs (2D: over the planes)")
    p.add_argument("--batch-size", type=int, default=16, help="planes per batch (2D models)")
    p.add_argument("--batch-size-3d", type=int, default=4, help="volumes per batch (3D UNet)")
    p.add_argument("--empty-fraction", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--d-lr", type=float, default=2e-4)
    p.add_argument("--d-channels", type=int, nargs=4, default=[16, 32, 64, 128])
    p.add_argument("--warmup", type=float, default=0.03, help="share of the schedule with linear warm-up")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", default="/tmp", help="where --models writes one log per model")
    p.add_argument("--out", default="benchmarks/results/accuracy", help="output prefix")
    return p


def run_queue(args: argparse.Namespace, argv: list[str]) -> None:
    """Run every (fold, model) of ``--models`` x ``--folds`` (fold-major) as ``--model`` processes, ``--jobs`` at a
    time, one log each under ``--log-dir``.

    Raises:
        RuntimeError: a run failed (named, with its log).
    """
    drop = {"--models": len(args.models), "--folds": len(args.folds or []), "--jobs": 1, "--fold": 1, "--collect": 0}
    common, i = [], 0
    while i < len(argv):
        if argv[i] in drop:
            i += 1 + drop[argv[i]]
        else:
            common.append(argv[i])
            i += 1
    folds = (args.folds or list(range(args.cv))) if args.cv else [args.fold]
    queue = [(fold, name) for fold in folds for name in args.models]
    jobs = args.jobs or len(queue)
    running: list[tuple[str, subprocess.Popen]] = []
    failed = []
    while queue or running:
        while queue and len(running) < jobs:
            fold, name = queue.pop(0)
            tag = Path(run_prefix(args.out, name, fold if args.cv else None)).name
            log = open(Path(args.log_dir) / f"{tag}.log", "w")
            cmd = [sys.executable, __file__, "--model", name, "--fold", str(fold), *common]
            running.append((log.name, subprocess.Popen(cmd, stdout=log, stderr=log)))
            logger.info("started %s (pid %d), log %s", tag, running[-1][1].pid, log.name)
        time.sleep(5)
        for log_name, proc in list(running):
            if proc.poll() is not None:
                running.remove((log_name, proc))
                logger.info("finished %s: exit %d", log_name, proc.returncode)
                if proc.returncode:
                    failed.append(log_name)
    if failed:
        raise RuntimeError(f"runs failed, see their logs: {', '.join(failed)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one model (``--model``), several side by side (``--models``), or ``--collect``; see the module docstring."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ignite").setLevel(logging.WARNING)
    if args.model:
        train_one(args)
    elif args.models:
        run_queue(args, list(sys.argv[1:] if argv is None else argv))
    if args.collect:
        collect(args.out, args.reference or None, args.cv, args.paired_with)
    elif not (args.model or args.models):
        raise ValueError("give --model, --models or --collect")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
