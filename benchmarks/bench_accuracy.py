"""Accuracy benchmark: the shipped recipe against the paper's ablations and MONAI baselines, by ``hippogan cv``.

Every model is the bundle's training config plus override files, trained, segmented and scored by the code users
run (:func:`hippogan.pipeline.crossval.run_crossval`, i.e. ``hippogan cv``, with its fold rule: the manifest's
``fold`` column, ``--folds`` picks which folds are held out in turn). Model ``m`` is
``configs/train.yaml`` + ``configs/train_cpu.yaml`` + the files of ``MODELS[m]`` in ``benchmarks/configs/``:

- ``ours``: the shipped recipe (no further file); ``ours_gan``: the same with the conditional discriminator;
- ``resse_gan`` / ``resse_sup``: the paper's Res-SEblock generator (no full-resolution skip, no augmentation)
  with / without the discriminator; ``gan``, ``res_gan``, ``se_gan``: the paper's Table 1 ablations, as GANs;
- ``unet2d``, ``attention_unet`` (``_aug``: with our plane augmentation): MONAI nets on the same planes;
- ``unet3d``: MONAI's 3D UNet on whole ROI volumes; ``resse3d``: our generator in 3D (``spatial_dims=3``) on
  whole 32x64x64 ROI volumes, with the 3D counterpart of the plane augmentation.

One model by hand is one command, e.g.::

    hippogan cv --dataset-dir ../shared/data/msd_hippocampus --output-dir runs/bench/unet2d --fold-list 0 \\
        --config train_cpu.yaml --config benchmarks/configs/unet2d.yaml

This driver runs that for each model (``OUT/<model>/``: ``fold_k/`` runs, ``cv_per_case.csv``, ``cv_summary.csv``),
then ``--collect`` writes ``OUT/accuracy.md`` and ``OUT/accuracy.csv``: per model the folds and cases, epochs,
training minutes and samples/s (from each run's ``epochs.csv``), generator parameters, mean ± std over all scored
cases, the std of the fold means, and the paired per-case difference of binary DSC to ``--paired-with`` with its
two-sided Wilcoxon signed-rank p. Any config key can be overridden for every model (``KEY=VALUE``, as ``hippogan
cv``), e.g. ``time_budget_minutes=24`` for the earlier time-boxed protocol or ``max_epochs=5``::

    OMP_NUM_THREADS=1 python benchmarks/bench_accuracy.py --models ours unet2d --folds 0 1 --out runs/bench
    python benchmarks/bench_accuracy.py --collect --out runs/bench

The committed tables under ``benchmarks/results/`` came from an earlier, since removed training loop of this
script (see those files); rerun with this driver into a new ``--out`` to compare.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.bundle import ConfigParser
from scipy.stats import wilcoxon

from hippogan.pipeline.bundled import DEFAULT_BUNDLE
from hippogan.pipeline.crossval import CV_PER_CASE_CSV, run_crossval
from hippogan.pipeline.file_io import atomic_path
from hippogan.pipeline.train_cli import parse_overrides

__all__ = ["CONFIG_DIR", "MODELS", "collect", "main", "model_configs", "run_model"]

logger = logging.getLogger("bench_accuracy")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""The models' override files of the bundle's ``train.yaml``."""
RECIPE = "train_cpu.yaml"
"""The bundle's CPU recipe, under every model."""
MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ours": ("Res-SEblock generator + full-res skip + augmentation, no D (ours, shipped)", ()),
    "ours_gan": ("the same + conditional discriminator (Res-SEblock GAN)", ("ours_gan.yaml",)),
    "resse_gan": ("Res-SEblock GAN (the paper's networks)", ("resse_gan.yaml",)),
    "resse_sup": ("Res-SEblock generator, no discriminator", ("resse_sup.yaml",)),
    "gan": ("GAN (plain encoder, no SE)", ("gan.yaml",)),
    "res_gan": ("Res GAN (residual, no SE)", ("res_gan.yaml",)),
    "se_gan": ("SEblock GAN (plain, SE)", ("se_gan.yaml",)),
    "unet2d": ("MONAI UNet 2D", ("unet2d.yaml",)),
    "attention_unet": ("MONAI AttentionUnet 2D", ("attention_unet.yaml",)),
    "attention_unet_aug": ("MONAI AttentionUnet 2D + augmentation", ("attention_unet_aug.yaml",)),
    "unet3d": ("MONAI UNet 3D (whole volume)", ("unet3d.yaml",)),
    "resse3d": ("Res-SEblock generator 3D (whole 32x64x64 ROI) + augmentation",
                (str(DEFAULT_BUNDLE / "configs" / "train_3d.yaml"),)),  # the bundle's 3D recipe
}
"""Model name -> (table label, its override files in :data:`CONFIG_DIR` (or absolute paths), merged after
``train.yaml`` and ``train_cpu.yaml``)."""
METRICS = ("dsc", "sen", "ppv", "jaccard", "hd95", "dsc_class1", "dsc_class2")


def model_configs(name: str) -> list[str]:
    """The extra config files of model ``name`` for ``run_crossval`` / ``hippogan cv --config``."""
    return [RECIPE, *(str(CONFIG_DIR / file) for file in MODELS[name][1])]


def run_model(
    name: str,
    dataset_dir: str | os.PathLike,
    out: str | os.PathLike,
    folds: Sequence[int],
    overrides: dict | None = None,
    manifest: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Cross-validate model ``name`` into ``out/name`` (``hippogan cv``); returns its summary table.

    Raises:
        ValueError: ``out/name`` already holds a cross-validation table (pick another ``out``), or bad input.
    """
    model_dir = Path(out) / name
    if (model_dir / CV_PER_CASE_CSV).exists():
        raise ValueError(f"{model_dir / CV_PER_CASE_CSV} exists: pass another --out rather than overwrite it.")
    logger.info("%s: folds %s, configs %s", name, list(folds), model_configs(name))
    return run_crossval(dataset_dir, model_dir, folds=list(folds), configs=model_configs(name), overrides=overrides,
                        manifest=manifest)  # fmt: skip


def _parameters(name: str) -> int:
    """Parameters of model ``name``'s generator (its ``network_def``, built from the configs alone)."""
    parser = ConfigParser()
    configs = DEFAULT_BUNDLE / "configs"
    parser.read_config([str(configs / "train.yaml"), str(configs / RECIPE), *model_configs(name)[1:]])
    return sum(p.numel() for p in parser.get_parsed_content("network_def").parameters())


def _training(model_dir: Path) -> dict[str, float]:
    """Epochs, training minutes and samples/s of a model's folds (``fold_k/epochs.csv``), means over the folds."""
    folds = [pd.read_csv(path) for path in sorted(model_dir.glob("fold_*/epochs.csv"))]
    if not folds:
        return {"epochs": math.nan, "train_min": math.nan, "samples_per_s": math.nan}
    return {
        "epochs": float(np.mean([len(f) for f in folds])),
        "train_min": float(np.mean([f["seconds"].sum() / 60 for f in folds])),
        "samples_per_s": float(np.mean([f["samples"].sum() / f["seconds"].sum() for f in folds])),
    }


def collect(out: str | os.PathLike, paired_with: str = "ours") -> list[dict]:
    """Merge the models found under ``out`` into ``out/accuracy.md`` and ``out/accuracy.csv`` (module docstring).

    Raises:
        ValueError: no model under ``out`` has a cross-validation table.
    """
    out = Path(out)
    rows = []
    for name, (label, _) in MODELS.items():
        path = out / name / CV_PER_CASE_CSV
        if not path.exists():
            continue
        cases = pd.read_csv(path)
        fold_means = cases.groupby("fold")["dsc"].mean()
        rows.append({
            "model": name, "label": label, "folds": len(fold_means), "cases": len(cases), **_training(out / name),
            "parameters": _parameters(name),
            "dsc_fold_std": float(fold_means.std(ddof=1)) if len(fold_means) > 1 else math.nan,
            "per_case": cases.set_index(["fold", "subject_id"])["dsc"],
            **{k: (float(cases[k].mean()), float(cases[k].std(ddof=0))) for k in METRICS},
        })  # fmt: skip
    if not rows:
        raise ValueError(f"no {CV_PER_CASE_CSV} under {out}/<model>/ (models: {', '.join(MODELS)}).")
    base = next((r["per_case"] for r in rows if r["model"] == paired_with), None)
    for r in rows:
        diff = (r["per_case"] - base).dropna() if base is not None else pd.Series(dtype=float)
        r["delta_dsc"] = float(diff.mean()) if len(diff) else math.nan
        r["p_wilcoxon"] = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else (1.0 if len(diff) else math.nan)
    csv = ["model,label,folds,cases,epochs,train_min,samples_per_s,parameters,"
           + ",".join(f"{k}_mean,{k}_std" for k in METRICS) + f",dsc_fold_std,delta_dsc_vs_{paired_with},p_wilcoxon"]
    md = [f"| model | folds (cases) | epochs | train min | samples/s | G params | binary DSC | DSC std of fold means "
          f"| SEN | PPV | Jaccard | HD95 mm | anterior DSC | posterior DSC | ΔDSC vs {paired_with} (p) |",
          "|" + "---|" * 15]  # fmt: skip
    for r in rows:
        csv.append(f"{r['model']},\"{r['label']}\",{r['folds']},{r['cases']},{r['epochs']:.2f},{r['train_min']:.2f},"
                   f"{r['samples_per_s']:.2f},{r['parameters']},"
                   + ",".join(f"{r[k][0]:.5g},{r[k][1]:.5g}" for k in METRICS)
                   + f",{r['dsc_fold_std']:.3g},{r['delta_dsc']:.5g},{r['p_wilcoxon']:.3g}")  # fmt: skip
        cells = [f"{r[k][0]:.{2 if k == 'hd95' else 3}f} ± {r[k][1]:.{2 if k == 'hd95' else 3}f}" for k in METRICS]
        fold_std = f"{r['dsc_fold_std']:.3f}" if r["folds"] > 1 else "-"
        paired = f"{r['delta_dsc']:+.3f} ({r['p_wilcoxon']:.2g})" if not math.isnan(r["delta_dsc"]) else ""
        md.append(f"| {r['label']} (`{r['model']}`) | {r['folds']} ({r['cases']}) | {r['epochs']:.1f} | "
                  f"{r['train_min']:.1f} | {r['samples_per_s']:.1f} | {r['parameters']:,} | {cells[0]} | {fold_std} | "
                  + " | ".join(cells[1:]) + f" | {paired} |")  # fmt: skip
    for path, lines in ((out / "accuracy.csv", csv), (out / "accuracy.md", ["# Accuracy benchmark", "", *md])):
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    logger.info("%d models -> %s, %s\n%s", len(rows), out / "accuracy.md", out / "accuracy.csv", "\n".join(md))
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=[], help="cross-validate these models")
    p.add_argument("--folds", type=int, nargs="+", default=[0], help="manifest folds held out in turn (default: 0)")
    p.add_argument("--collect", action="store_true", help="write OUT/accuracy.md and OUT/accuracy.csv")
    p.add_argument("--paired-with", default="ours", choices=list(MODELS), help="model of the paired DSC comparison")
    p.add_argument("--dataset-dir", type=Path, default=Path("../shared/data/msd_hippocampus"))
    p.add_argument("--manifest", type=Path, default=None, help="default: the bundle's (data_manifests/)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one trained fastest on 2 shared cores)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_accuracy"), help="results folder (OUT/<model>/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every model")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Cross-validate ``--models``, then ``--collect``; see the module docstring. Returns 0, or 2 on bad input."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if not (args.models or args.collect):
        _parser().error("give --models, --collect, or both")
    torch.set_num_threads(args.threads)
    try:
        overrides = parse_overrides(args.overrides)
        for name in args.models:
            run_model(name, args.dataset_dir, args.out, args.folds, overrides, args.manifest)
        if args.collect:
            collect(args.out, args.paired_with)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
