"""Accuracy benchmark (issue #5): the Res-SEblock GAN against its ablations and MONAI baselines, one held-out fold.

Reduced protocol (CPU, time-boxed): train on MSD folds 1-9 (180 cases), score fold 0 (20 cases). This is ONE fold,
not the 5- or 10-fold cross-validation of the paper; the spread is over the 20 cases of that fold.

Every model trains in its own process with one torch thread under the same budget: a wall-time budget
(``--minutes``; warm-up + cosine learning rate over that time) and, optionally, at most ``--epochs`` epochs over the
same sagittal planes (those of :class:`cpu_recipe.SliceEpochs`: all labelled planes plus a re-drawn 10% of the
empty ones, batch 16). The 3D UNet trains on whole ``48x64x64`` ROI volumes (batch ``--batch-size-3d``) for the same
wall time. All models train with the engine that ships (:class:`~hippogan.pipeline.trainer.ConditionalGanTrainer`,
``adversarial_weight=0`` and no discriminator for the supervised ones), ``DiceCELoss(softmax=True, batch=True)`` on
logits, Nadam (beta1 0.5), lr 1e-3 (D 2e-4), 3 output classes. Models (``MODELS``):

- ``resse_gan``: the shipped narrow Res-SEblock GAN (adversarial weight 0.05, ``SegDiscriminator`` 16-32-64-128);
- ``resse_sup``: the same generator without the discriminator (supervised loss alone);
- ``gan``, ``res_gan``, ``se_gan``: the paper's ablations (:data:`hippogan.networks.ABLATION_VARIANTS`), as GANs;
- ``unet2d``, ``attention_unet``: MONAI ``UNet`` / ``AttentionUnet`` on the same planes, supervised;
- ``unet3d``: MONAI ``UNet`` (3D) on whole volumes, supervised.

Run several models side by side (one process each) and merge::

    nohup python benchmarks/bench_accuracy.py --models resse_gan resse_sup unet3d --minutes 20 \
        --out benchmarks/results/accuracy > /tmp/accuracy_batch1.log 2>&1 &
    python benchmarks/bench_accuracy.py --collect --out benchmarks/results/accuracy

A model writes ``<out>_<model>.json`` (budget, history, timings, metrics) and ``<out>_<model>_cases.csv``;
``--collect`` writes ``<out>.md`` and ``<out>.csv`` (mean and std over the cases of every model found).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.losses import DiceCELoss
from monai.networks.nets import AttentionUnet, UNet
from monai.utils import set_determinism
from scipy.stats import wilcoxon

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_recipe import SliceEpochs, evaluate, generator_kwargs, load_volumes  # noqa: E402

from hippogan.networks import ABLATION_VARIANTS, ResSEGenerator, SegDiscriminator  # noqa: E402
from hippogan.pipeline.manifest import load_manifest, split_by_fold  # noqa: E402
from hippogan.pipeline.metrics import evaluate_case  # noqa: E402
from hippogan.pipeline.trainer import ConditionalGanTrainer, default_optimizer  # noqa: E402
from hippogan.transforms.keys import IMAGE, LABEL  # noqa: E402

__all__ = ["MODELS", "VolumeEpochs", "build_model", "evaluate_3d", "train_one", "collect", "main"]

logger = logging.getLogger("bench_accuracy")

_UNET = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2)}
MODELS: dict[str, dict] = {
    "resse_gan": {"label": "Res-SEblock GAN (ours, shipped recipe)", "family": "resse", "variant": "Res SEblock GAN", "adv": 0.05},
    "resse_sup": {"label": "Res-SEblock generator, no discriminator", "family": "resse", "variant": "Res SEblock GAN", "adv": 0.0},
    "gan": {"label": "GAN (plain encoder, no SE)", "family": "resse", "variant": "GAN", "adv": 0.05},
    "res_gan": {"label": "Res GAN (residual, no SE)", "family": "resse", "variant": "Res GAN", "adv": 0.05},
    "se_gan": {"label": "SEblock GAN (plain, SE)", "family": "resse", "variant": "SEblock GAN", "adv": 0.05},
    "unet2d": {"label": "MONAI UNet 2D", "family": "unet", "adv": 0.0},
    "attention_unet": {"label": "MONAI AttentionUnet 2D", "family": "attention_unet", "adv": 0.0},
    "unet3d": {"label": "MONAI UNet 3D (whole volume)", "family": "unet3d", "adv": 0.0},
}
"""Benchmark models: table label, network family, ablation variant, adversarial weight."""


def build_model(name: str) -> tuple[torch.nn.Module, dict]:
    """Return ``(network, kwargs)`` of model ``name``: ``(B, 1, 64, 64)`` (3D: ``(B, 1, 48, 64, 64)``) -> 3 logits."""
    spec = MODELS[name]
    if spec["family"] == "resse":
        kwargs = generator_kwargs("narrow") | ABLATION_VARIANTS[spec["variant"]]
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


def train_one(args: argparse.Namespace) -> dict:
    """Train and score ``args.model``; write ``<out>_<model>.json`` and ``_cases.csv``; return the result dict."""
    torch.set_num_threads(args.threads)
    set_determinism(args.seed)
    name, spec = args.model, MODELS[args.model]
    start = time.perf_counter()
    train_rows, val_rows = split_by_fold(load_manifest(args.manifest, args.dataset_dir), args.fold)
    train_img, train_lab = load_volumes(train_rows)
    val_img, val_lab = load_volumes(val_rows)
    is_3d = spec["family"] == "unet3d"
    if is_3d:
        data = VolumeEpochs(train_img, train_lab, args.batch_size_3d, seed=args.seed)
    else:
        data = SliceEpochs(train_img, train_lab, args.batch_size, args.empty_fraction, seed=args.seed)
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
        p, w = min(p, 1.0), args.warmup
        factor = p / w if p < w else 0.5 * (1 + math.cos(math.pi * (p - w) / (1 - w)))
        for opt, lr in ((g_opt, args.lr), (d_opt, args.d_lr)):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = lr * max(factor, 0.01)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _budget(engine) -> None:
        if time.perf_counter() - clock["start"] > budget:
            logger.info("%s: wall-time budget of %.1f min reached at iteration %d", name, args.minutes, engine.state.iteration)
            engine.terminate()

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
        "data": {"train_cases": len(train_rows), "val_fold": args.fold, "val_cases": len(val_rows),
                 "samples_per_epoch": data.n_planes, "protocol": "one fold held out (fold 0), not cross-validation"},
        "hardware": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "iterations": iterations, "epochs": iterations / len(data), "train_s": train_s,
        "samples_per_s": iterations * batch_size / train_s, "eval_s": eval_s,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "val_metrics": summary, "history": history,
    }
    prefix = Path(f"{args.out}_{name}")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=1))
    keys = list(cases[0])
    lines = ["subject_id," + ",".join(keys)]
    lines += [row["subject_id"] + "," + ",".join(f"{case[k]:.5g}" for k in keys) for row, case in zip(val_rows, cases)]
    Path(f"{prefix}_cases.csv").write_text("\n".join(lines) + "\n")
    return result


_COLUMNS = ("dsc", "sen", "ppv", "jaccard", "hd95", "dsc_class1", "dsc_class2")


def _mean_std(path: Path) -> dict[str, tuple[float, float]]:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    header, values = rows[0], np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    return {key: (float(np.nanmean(values[:, i])), float(np.nanstd(values[:, i]))) for i, key in enumerate(header[1:])}


def _paired(rows: list[dict], out: str, reference: str | None) -> None:
    """Add ``delta_dsc`` and ``p_wilcoxon``: paired per-case binary DSC difference to ``resse_gan`` (same cases)."""
    paths = {r["model"]: Path(f"{out}_{r['model']}_cases.csv") for r in rows}
    if reference:
        paths[Path(reference).name] = Path(f"{reference}_cases.csv")
    if "resse_gan" not in paths:
        return
    def dsc(path: Path) -> dict[str, float]:
        lines = [line.split(",") for line in path.read_text().splitlines()]
        column = lines[0].index("dsc")
        return {line[0]: float(line[column]) for line in lines[1:]}
    base = dsc(paths["resse_gan"])
    for r in rows:
        other = dsc(paths[r["model"]])
        diff = np.array([other[case] - base[case] for case in base])
        r["delta_dsc"] = float(diff.mean())
        r["p_wilcoxon"] = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0


def collect(out: str, reference: str | None) -> list[dict]:
    """Merge ``<out>_<model>.json`` + ``_cases.csv`` of every model found into ``<out>.md`` and ``<out>.csv``."""
    rows = []
    for name in MODELS:
        path = Path(f"{out}_{name}.json")
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        stats = _mean_std(Path(f"{out}_{name}_cases.csv"))
        rows.append({"model": name, "label": result["label"], "epochs": result["epochs"],
                     "train_min": result["train_s"] / 60, "samples_per_s": result["samples_per_s"],
                     "unit": result["budget"]["unit"], "parameters": result["parameters"],
                     "d_parameters": result["d_parameters"], **{k: stats[k] for k in _COLUMNS}})
    if reference and Path(f"{reference}.json").exists():
        result = json.loads(Path(f"{reference}.json").read_text())
        stats = _mean_std(Path(f"{reference}_cases.csv"))
        rows.append({"model": Path(reference).name, "label": "reference: committed shipped run (other batch conditions)",
                     "epochs": result["epochs"], "train_min": result["train_minutes"],
                     "samples_per_s": float(np.mean([h["planes_per_s"] for h in result["history"]])), "unit": "planes",
                     "parameters": result["generator_parameters"], "d_parameters": None,
                     **{k: stats[k] for k in _COLUMNS}})
    if not rows:
        raise ValueError(f"no model results {out}_<model>.json found (models: {', '.join(MODELS)})")
    _paired(rows, out, reference)
    csv = ["model,label,epochs,train_min,samples_per_s,unit,parameters,d_parameters,"
           + ",".join(f"{k}_mean,{k}_std" for k in _COLUMNS) + ",delta_dsc_vs_resse_gan,p_wilcoxon"]
    md = ["| model | epochs | train min | samples/s | G params | binary DSC | SEN | PPV | Jaccard | HD95 mm "
          "| anterior DSC | posterior DSC | ΔDSC vs resse_gan (p) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        csv.append(f"{r['model']},\"{r['label']}\",{r['epochs']:.2f},{r['train_min']:.2f},{r['samples_per_s']:.2f},"
                   f"{r['unit']},{r['parameters']},{r['d_parameters'] if r['d_parameters'] is not None else ''},"
                   + ",".join(f"{r[k][0]:.5g},{r[k][1]:.5g}" for k in _COLUMNS)
                   + f",{r.get('delta_dsc', float('nan')):.5g},{r.get('p_wilcoxon', float('nan')):.3g}")
        cells = [f"{r[k][0]:.3f} ± {r[k][1]:.3f}" if k != "hd95" else f"{r[k][0]:.2f} ± {r[k][1]:.2f}" for k in _COLUMNS]
        md.append(f"| {r['label']} (`{r['model']}`) | {r['epochs']:.1f} | {r['train_min']:.1f} | "
                  f"{r['samples_per_s']:.1f} {r['unit']} | {r['parameters']:,} | " + " | ".join(cells)
                  + (f" | {r['delta_dsc']:+.3f} ({r['p_wilcoxon']:.2g}) |" if "delta_dsc" in r else " | |"))
    Path(f"{out}.csv").write_text("\n".join(csv) + "\n")
    table = "\n".join(md) + "\n"
    path = Path(f"{out}.md")
    text = path.read_text() if path.exists() else ""
    begin, end = "<!-- table -->", "<!-- /table -->"
    if begin in text and end in text:  # keep the hand-written notes around the generated table
        text = text[: text.index(begin) + len(begin)] + "\n" + table + text[text.index(end):]
    else:
        text = f"# Accuracy benchmark (issue #5), fold 0 only\n\n{begin}\n{table}{end}\n"
    path.write_text(text)
    logger.info("%d models -> %s.md, %s.csv\n%s", len(rows), out, out, table)
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), help="train and score this one model in this process")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), help="run these models side by side, one process each")
    p.add_argument("--collect", action="store_true", help="merge the per-model results into <out>.md and <out>.csv")
    p.add_argument("--reference", default="benchmarks/results/final_fold0",
                   help="committed cpu_recipe run added to the table as a reference row ('' for none)")
    p.add_argument("--manifest", default="data_manifests/msd_hippocampus.csv")
    p.add_argument("--dataset-dir", default="../shared/data/msd_hippocampus")
    p.add_argument("--fold", type=int, default=0)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one model (``--model``), several side by side (``--models``), or ``--collect``; see the module docstring."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ignite").setLevel(logging.WARNING)
    if args.model:
        train_one(args)
    elif args.models:
        argv = list(sys.argv[1:] if argv is None else argv)
        i = argv.index("--models")
        j = i + 1 + len(args.models)
        common = argv[:i] + argv[j:]
        procs = []
        for name in args.models:
            log = open(Path(args.log_dir) / f"{Path(args.out).name}_{name}.log", "w")
            procs.append(subprocess.Popen([sys.executable, __file__, "--model", name, *common], stdout=log, stderr=log))
            logger.info("started %s (pid %d), log %s", name, procs[-1].pid, log.name)
        codes = [proc.wait() for proc in procs]
        logger.info("exit codes: %s", dict(zip(args.models, codes)))
        if any(codes):
            return 1
    if args.collect:
        collect(args.out, args.reference or None)
    elif not (args.model or args.models):
        raise ValueError("give --model, --models or --collect")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
