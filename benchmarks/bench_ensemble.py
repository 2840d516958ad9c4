"""Seed and multi-view ensembles and the per-scan confidence, measured on the cross-validation (issue 14).

Given ``hippogan cv`` runs of one recipe that differ only in their seed or their view (the members; the same
manifest and folds; ``--views`` names each run's view, e.g. ``sagittal coronal`` for a multi-view ensemble),
for every fold k the fold's held-out scans are segmented by the members as one model (mean of their softmax
probabilities: ``ckpt_path`` a list, a :class:`~hippogan.networks.ProbabilityEnsemble`) through the shipped
bundle's inference chain, and scored like the CV
(:func:`~hippogan.pipeline.evaluation.evaluate_files`: binary and per-class DSC, HD95 on each scan's own grid, with the
largest-component clean-up). Per scan, three confidences:

- ``single``: the first member's self-agreement (:func:`~hippogan.pipeline.results.self_agreement`, what
  ``hippogan segment`` writes in ``volumes.csv``'s ``confidence`` for one model), read from the CV's own
  ``predictions/volumes.csv``;
- ``ensemble``: the self-agreement of the members' mean probabilities;
- ``pairwise``: the mean pairwise Dice of the members' label maps (the CV's predictions);
- as a baseline, the first member's predicted volume (a larger structure scores a higher Dice).

Reported: the lever (the ensemble against its first member and against the mean member: mean DSC difference,
Wilcoxon signed-rank p over scans), seconds per scan (``Segmenter.run`` over the fold, label maps and
``volumes.csv`` written; the first member alone and the ensemble, one after the other), and for each confidence its Spearman rho with the binary DSC
over all scans, and a flag rule chosen without the scored fold (flag a scan whose confidence lies below the 10th
percentile of the other folds' scans): mean DSC of flagged and unflagged scans and how many of the worst 10% it
flags.

Run from the repository root after the CV runs, e.g.::

    hippogan cv --dataset-dir DIR --output-dir runs/cv5_a --manifest M --config train_cpu.yaml --folds 5 max_epochs=10
    hippogan cv ... --output-dir runs/cv5_b ... seed=1
    python benchmarks/bench_ensemble.py --runs runs/cv5_a runs/cv5_b --manifest M --dataset-dir DIR \\
        --out benchmarks/results/ensemble_confidence.md
    hippogan cv ... --output-dir runs/cv5_cor ... view=coronal
    python benchmarks/bench_ensemble.py --runs runs/cv5_a runs/cv5_cor --views sagittal coronal ... \\
        --out benchmarks/results/multiview.md
    hippogan cv ... --output-dir runs/cv5_3d ... --config train_3d.yaml max_epochs=20
    python benchmarks/bench_ensemble.py --runs runs/cv5_s20 runs/cv5_3d --views sagittal volume \
        --network-overrides '{}' '{"spatial_dims": 3}' --roi-size 32 64 64 ... --out benchmarks/results/sag_3d.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai.bundle import ConfigParser
from scipy.stats import spearmanr, wilcoxon

from hippogan.pipeline.bundled import DEFAULT_BUNDLE
from hippogan.pipeline.evaluation import PER_CASE_CSV, evaluate_files
from hippogan.pipeline.file_io import write_results
from hippogan.pipeline.manifest import FOLD, SUBJECT_ID, select_folds
from hippogan.pipeline.results import VOLUMES_CSV, read_volumes_csv
from hippogan.pipeline.segmenter import segmenter_from_bundle
from hippogan.pipeline.train_cli import build_train_workflow

__all__ = ["main"]

logger = logging.getLogger("bench_ensemble")

METRICS = ("dsc", "dsc_class1", "dsc_class2", "hd95")
FLAG_QUANTILE = 0.10


def _member_scores(run: Path, folds: list[int]) -> pd.DataFrame:
    """A CV run's per-case scores of ``folds`` (each fold's ``evaluation/``, written as soon as the fold is done)."""
    frames = []
    for fold in folds:
        path = run / f"fold_{fold}" / "evaluation" / PER_CASE_CSV
        if not path.is_file():
            raise ValueError(f"{path} not found: fold {fold} of {run} is not finished")
        frames.append(pd.read_csv(path, dtype={SUBJECT_ID: str}).assign(**{FOLD: fold}))
    return pd.concat(frames, ignore_index=True)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _ensemble_fold(
    runs: list[Path], fold: int, rows: list[dict], out: Path, views: list[str], overrides: dict
) -> pd.DataFrame:
    """Segment and score one fold with the members as one model; per scan, the three confidences.

    ``views``: the view each run was trained on; members of different views form a multi-view ensemble (each
    generator over its own view's planes of the 3D ROI, a 3D one on the whole ROI,
    :class:`~hippogan.networks.ProbabilityEnsemble`). ``overrides``: of the bundle's inference config
    (``member_network_defs``, ``member_contexts``, ``roi_size``, ``volume_roi_size``).
    """
    checkpoints = [run / f"fold_{fold}" / "checkpoints" / "best.pt" for run in runs]
    missing = [str(c) for c in checkpoints if not c.is_file()]
    if missing:
        raise ValueError(f"not found: {', '.join(missing)}; are the runs finished `hippogan cv` runs of fold {fold}?")
    overrides = {**overrides, "mode": "precropped", "device": "$torch.device('cpu')"}
    single = segmenter_from_bundle(
        overrides={**overrides, "ckpt_paths": [str(checkpoints[0])], "ckpt_views": views[:1], "ensemble": False}
    )
    start = time.perf_counter()
    single.run(rows, out / f"fold_{fold}_member1", progress=False)  # timed side by side with the ensemble
    single_seconds = (time.perf_counter() - start) / len(rows)
    # the bundle's own ensemble keys: generators of different views form a multi-view ensemble
    ensemble = segmenter_from_bundle(
        overrides={**overrides, "ckpt_paths": [str(c) for c in checkpoints], "ckpt_views": views, "ensemble": True}
    )
    start = time.perf_counter()
    written = ensemble.run(rows, out / f"fold_{fold}", progress=False)
    seconds = (time.perf_counter() - start) / len(rows)
    if written.failures:
        raise ValueError(f"fold {fold}: segmentation failed for {written.failures}")
    scored = pd.DataFrame(evaluate_files([{**r, "pred": written.label_maps[r[SUBJECT_ID]]} for r in rows]))
    confidence = {row["subject"]: row["confidence"] for row in read_volumes_csv(written.volumes_csv)}
    cv_table = read_volumes_csv(runs[0] / f"fold_{fold}" / "predictions" / VOLUMES_CSV)
    single_confidence = {row["subject"]: row["confidence"] for row in cv_table}
    single_volume = {row["subject"]: row["total_mm3"] for row in cv_table}
    pairwise = {}
    for row in rows:
        maps = [np.asarray(nib.load(run / f"fold_{fold}" / "predictions" / f"{row[SUBJECT_ID]}.nii.gz").dataobj) > 0
                for run in runs]  # fmt: skip
        pairwise[row[SUBJECT_ID]] = np.mean([_dice(a, b) for a, b in itertools.combinations(maps, 2)])
    scored["ensemble_confidence"] = scored[SUBJECT_ID].map(confidence)
    scored["single_confidence"] = scored[SUBJECT_ID].map(single_confidence)
    scored["single_volume"] = scored[SUBJECT_ID].map(single_volume)
    scored["pairwise_confidence"] = scored[SUBJECT_ID].map(pairwise)
    scored[FOLD] = fold
    scored["seconds_per_scan"] = seconds
    scored["member1_seconds_per_scan"] = single_seconds
    return scored


def _flag_figures(table: pd.DataFrame, column: str, dsc: str) -> dict[str, float]:
    """The flag rule chosen without the scored fold, against the DSC column ``dsc``; Spearman rho over all scans."""
    flagged = pd.Series(False, index=table.index)
    for fold, cases in table.groupby(FOLD):
        threshold = table.loc[table[FOLD] != fold, column].quantile(FLAG_QUANTILE)
        flagged[cases.index] = cases[column] < threshold
    worst = table[dsc] <= table[dsc].quantile(FLAG_QUANTILE)
    rho, p = spearmanr(table[column], table[dsc])
    return {
        "rho": rho, "p": p, "n_flagged": int(flagged.sum()), "dsc_flagged": table.loc[flagged, dsc].mean(),
        "dsc_unflagged": table.loc[~flagged, dsc].mean(), "worst_flagged": int((flagged & worst).sum()),
        "n_worst": int(worst.sum()),
    }  # fmt: skip


def _markdown(
    table: pd.DataFrame,
    members: list[pd.DataFrame],
    runs: list[Path],
    views: list[str],
    command: str,
    baselines: dict[str, pd.DataFrame] | None = None,
) -> str:
    lines = [
        "# Seed ensembles and per-scan confidence on the cross-validation (issue 14)",
        "",
        f"Written by `{command}`. Members: {', '.join(f'{r} ({v})' for r, v in zip(runs, views))} (one recipe; "
        "seeds or views differ). The module "
        "docstring gives the method. Per-fold means; `mean` is the mean of the fold means; all on each scan's own "
        "grid with the largest-component clean-up.",
        "",
        "| model | " + " | ".join(f"fold {k}" for k in sorted(table[FOLD].unique())) + " | mean binary DSC | anterior | "
        "posterior | HD95 mm | s/scan |",
        "|---|" + "---|" * (table[FOLD].nunique() + 5),
    ]
    rows = {f"member {i + 1}": m for i, m in enumerate(members)}
    rows["ensemble"] = table
    for name, frame in rows.items():
        folds = frame.groupby(FOLD)["dsc"].mean()
        seconds = f"{frame['seconds_per_scan'].mean():.3f}" if "seconds_per_scan" in frame else ""
        if name == "member 1":
            seconds = f"{table['member1_seconds_per_scan'].mean():.3f}"
        lines.append(
            f"| {name} | " + " | ".join(f"{v:.4f}" for v in folds) + f" | {folds.mean():.4f} | "
            + " | ".join(f"{frame.groupby(FOLD)[m].mean().mean():.{2 if m == 'hd95' else 4}f}" for m in METRICS[1:])
            + f" | {seconds} |"
        )
    lines += ["", "Ensemble against its members (paired over scans):", "",
              "| against | metric | mean difference | Wilcoxon p |", "|---|---|---|---|"]  # fmt: skip
    mean_member = pd.concat(members).groupby(SUBJECT_ID)[list(METRICS)].mean()
    reference = {"member 1": members[0].set_index(SUBJECT_ID), "mean member": mean_member}
    reference.update({f"{name} ({len(cases)} scans)": cases for name, cases in (baselines or {}).items()})
    ens = table.set_index(SUBJECT_ID)
    for name, ref in reference.items():
        common = ens.index.intersection(ref.index)
        for metric in METRICS[:3]:
            diff = ens.loc[common, metric] - ref.loc[common, metric]
            lines.append(f"| {name} | {metric} | {diff.mean():+.4f} | {wilcoxon(diff).pvalue:.2g} |")
    lines += ["", "Members against member 1 (paired over scans; e.g. two recipes' CV runs as members):", "",
              "| member | metric | mean difference | higher/lower | Wilcoxon p |", "|---|---|---|---|---|"]  # fmt: skip
    first = members[0].set_index(SUBJECT_ID)
    for index, member in enumerate(members[1:], start=2):
        other = member.set_index(SUBJECT_ID)
        common = first.index.intersection(other.index)
        for metric in METRICS[:3]:
            diff = other.loc[common, metric] - first.loc[common, metric]
            lines.append(f"| member {index} | {metric} | {diff.mean():+.4f} | {(diff > 0).sum()}/{(diff < 0).sum()} "
                         f"| {wilcoxon(diff).pvalue:.2g} |")  # fmt: skip
    if baselines:
        lines += ["", "Baselines: the per-case CSVs named in the command (the same folds), paired over the scans both "
                  "scored; those of `benchmarks/bench_accuracy.py` are scored on the ROI grid without the "
                  "largest-component clean-up, an earlier output of this script as the table above."]
    lines += [
        "",
        f"Confidence against the real binary DSC ({len(table)} held-out scans; single: member 1's own confidence and "
        "DSC, the others the ensemble's; the baseline row ranks scans by their predicted hippocampal volume alone, "
        "since larger structures score higher Dice). Flag: confidence below the "
        f"{100 * FLAG_QUANTILE:.0f}th percentile of the other folds' scans (no threshold fitted on the scored fold); "
        f"worst: the {100 * FLAG_QUANTILE:.0f}% lowest DSC.",
        "",
        "| confidence | Spearman rho | p | flagged | DSC flagged | DSC unflagged | worst 10% flagged |",
        "|---|---|---|---|---|---|---|",
    ]
    table = table.assign(member_dsc=table[SUBJECT_ID].map(members[0].set_index(SUBJECT_ID)["dsc"]))
    confidences = {"single (member 1)": ("single_confidence", "member_dsc"),
                   "ensemble": ("ensemble_confidence", "dsc"), "pairwise (ensemble)": ("pairwise_confidence", "dsc"),
                   "baseline: predicted volume (member 1)": ("single_volume", "member_dsc")}
    for name, (column, dsc) in confidences.items():
        f = _flag_figures(table, column, dsc)
        lines.append(
            f"| {name} | {f['rho']:.3f} | {f['p']:.2g} | {f['n_flagged']} | {f['dsc_flagged']:.4f} "
            f"| {f['dsc_unflagged']:.4f} | {f['worst_flagged']} of {f['n_worst']} |"
        )
    lines += ["", "Confidence deciles over all scans (single model): "
              + ", ".join(f"{v:.4f}" for v in table["single_confidence"].quantile(np.linspace(0, 1, 11))), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="`hippogan cv` output folders (members)")
    parser.add_argument("--manifest", type=Path, required=True, help="the manifest the runs were trained with")
    parser.add_argument("--dataset-dir", type=Path, required=True)
    parser.add_argument("--folds", type=int, nargs="+", help="folds to use (default: those the first run finished)")
    parser.add_argument(
        "--views", nargs="+", help="the view each run was trained on (default: sagittal for all): a multi-view ensemble"
    )
    parser.add_argument(
        "--network-overrides", nargs="+", metavar="JSON",
        help="one JSON object per run, merged into the bundle's network_def for that member (default {} each), e.g. "
        "'{}' '{\"spatial_dims\": 3}' for a 2D and a 3D generator (give the 3D one the view volume)",
    )  # fmt: skip
    parser.add_argument(
        "--contexts", type=int, nargs="+", metavar="K",
        help="the sagittal neighbours each run was trained with on each side (train#preprocessing#context; default 0 "
        "each), e.g. 1 0 for a 2.5D sagittal and a 1-channel coronal generator (give the 2.5D one in_channels 3)",
    )  # fmt: skip
    parser.add_argument("--roi-size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="ROI (default: the bundle's)")
    parser.add_argument(
        "--volume-roi-size", type=int, nargs=3, metavar=("X", "Y", "Z"),
        help="the window 3D (volume) members run on within the ROI (default: the whole ROI)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--baseline", nargs="+", default=[], metavar="NAME=CSV",
        help="per-case CSVs of other models on the same folds, '{fold}' in the path for one file a fold, e.g. "
        "unet2d=benchmarks/results/cv5/accuracy_unet2d_fold{fold}_cases.csv, or one file with a fold column (an "
        "earlier run's output, e.g. benchmarks/results/multiview.csv): paired tests against the ensemble",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ensemble_confidence.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    if len(args.runs) < 2:
        raise ValueError("--runs: give at least two members")
    views = args.views or ["sagittal"] * len(args.runs)
    if len(views) != len(args.runs):
        raise ValueError(f"--views: give one view per run ({len(args.runs)}), got {views}")
    network_overrides = [json.loads(text) for text in args.network_overrides or ["{}"] * len(args.runs)]
    if len(network_overrides) != len(args.runs):
        raise ValueError(f"--network-overrides: give one per run ({len(args.runs)}), got {len(network_overrides)}")
    bundle = ConfigParser()
    bundle.read_config(str(DEFAULT_BUNDLE / "configs" / "inference.yaml"))
    network_def = dict(bundle.get("network_def"))
    overrides = {"member_network_defs": [{**network_def, **extra} for extra in network_overrides]}
    if args.contexts:
        if len(args.contexts) != len(args.runs):
            raise ValueError(f"--contexts: give one per run ({len(args.runs)}), got {args.contexts}")
        overrides["member_contexts"] = list(args.contexts)
    if args.roi_size:
        overrides["roi_size"] = list(args.roi_size)
    if args.volume_roi_size:
        overrides["volume_roi_size"] = list(args.volume_roi_size)
    folds = args.folds or sorted(int(p.parent.name.split("_")[1]) for p in args.runs[0].glob("fold_*/evaluation"))
    members = [_member_scores(run, folds) for run in args.runs]
    workflow = build_train_workflow(args.dataset_dir, Path("runs/ensemble"), manifest=args.manifest)
    datalist = workflow.parser.get_parsed_content("datalist")
    tables = []
    for fold in folds:
        rows = select_folds(datalist, folds=[fold])
        tables.append(_ensemble_fold(args.runs, fold, rows, Path("runs/ensemble") / args.out.stem, views, overrides))
        logger.info("fold %d: ensemble DSC %.4f", fold, tables[-1]["dsc"].mean())
    table = pd.concat(tables, ignore_index=True)
    command = "python benchmarks/bench_ensemble.py " + " ".join(sys.argv[1:] if argv is None else argv)
    baselines = {}
    for spec in args.baseline:
        name, _, pattern = spec.partition("=")
        files = [Path(pattern.format(fold=fold)) for fold in folds] if "{fold}" in pattern else [Path(pattern)]
        found = [pd.read_csv(f, dtype={SUBJECT_ID: str}) for f in files if f.is_file()]
        found = [f[f[FOLD].isin(folds)] if FOLD in f else f for f in found]  # one file of all folds: these
        if not name or not found:
            raise ValueError(f"--baseline {spec!r}: expected NAME=CSV naming existing files ({files[0]}, ...)")
        baselines[name] = pd.concat(found, ignore_index=True).set_index(SUBJECT_ID)
    text = _markdown(table, members, args.runs, views, command, baselines)
    write_results(args.out, text, table)
    logger.info("%s\nwrote %s", text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
