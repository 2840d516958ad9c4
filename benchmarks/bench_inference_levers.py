"""Inference-only accuracy levers on the cross-validation (issue 14): test-time augmentation and a one-plane
anterior/posterior split.

For each fold, the bundle's inference chain segments the fold's held-out scans with the given ``hippogan cv``
runs' generators of that fold as one model (as :mod:`bench_ensemble` does; ``--views`` one per run), once
without test-time augmentation (``none``) and once for each augmentation set of ``--tta``:

- ``rotx6``, ``roty6``, ``rotz6``: the ROI also rotated by +-6 degrees about RAS x (the sagittal planes' normal),
  y (the coronal planes') or z (the axial planes');
- ``scale5``: the ROI also scaled by 0.95 and 1.05 about its centre.

Each augmented copy's class probabilities are warped back (trilinear; voxels that left the field count as
background) and averaged with the plain pass: ``(B, 3, X, Y, Z)`` probabilities, ROI grid.

``cut``: the MSD labels split the hippocampus into anterior (1) and posterior (2) by one plane of the scan's grid
(one index along its y axis) in 151 of the 200 training labels, and the best such plane misassigns 0.2% of the
voxels on average. ``cut`` relabels the plain prediction's hippocampus by the y plane that disagrees least with its
own labels (anterior at higher y: RAS), on the input grid; binary DSC is unchanged by construction. ``oracle cut``
splits it by the label's own best plane instead: a bound, how far a perfect head/body boundary would take the
anterior and posterior DSC with the same hippocampus.

Scored like the CV (:func:`~hippogan.pipeline.evaluation.evaluate_files`, largest-component clean-up); reported:
mean binary, anterior and posterior DSC, seconds per scan, and each lever against ``none`` (mean difference,
scans higher/lower, Wilcoxon signed-rank p). Run from the repository root after the CV runs, e.g.::

    python benchmarks/bench_inference_levers.py --runs runs/cv5_a runs/cv5_cor --views sagittal coronal \\
        --manifest runs/cv5_manifest.csv --dataset-dir ../shared/data/msd_hippocampus --folds 0 1 \\
        --out benchmarks/results/inference_levers.md
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import wilcoxon

from hippogan.pipeline.evaluation import evaluate_files
from hippogan.pipeline.file_io import write_results
from hippogan.pipeline.manifest import SUBJECT_ID, select_folds
from hippogan.pipeline.segmenter import segmenter_from_bundle
from hippogan.pipeline.train_cli import build_train_workflow

__all__ = ["main"]

logger = logging.getLogger("bench_inference_levers")

METRICS = ("dsc", "dsc_class1", "dsc_class2")


def _rotation(axis: int, degrees: float) -> torch.Tensor:
    """3x3 rotation about RAS axis ``axis`` (0 x, 1 y, 2 z) by ``degrees``."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    matrix = torch.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


TTA_SETS = {
    "rotx6": [_rotation(0, 6), _rotation(0, -6)],
    "roty6": [_rotation(1, 6), _rotation(1, -6)],
    "rotz6": [_rotation(2, 6), _rotation(2, -6)],
    "scale5": [torch.eye(3) * 0.95, torch.eye(3) * 1.05],
}


def _warp(volume: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Resample ``(B, C, X, Y, Z)`` at ``matrix`` times each voxel's normalised (x, y, z) position (trilinear)."""
    swap = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # grid_sample orders (z, y, x)
    theta = torch.zeros(volume.shape[0], 3, 4)
    theta[:, :, :3] = swap @ matrix @ swap
    grid = F.affine_grid(theta, list(volume.shape), align_corners=False)
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class AugmentedInferer:
    """An inferer's mean class probability over the plain ROI batch and its copies warped by ``matrices``.

    Returns log probabilities ``(B, C, X, Y, Z)``, as a :class:`~hippogan.networks.ProbabilityEnsemble` does.
    """

    def __init__(self, inferer, matrices: list[torch.Tensor]) -> None:
        self.inferer, self.matrices = inferer, matrices

    def __call__(self, images: torch.Tensor, network) -> torch.Tensor:
        images = torch.as_tensor(images)
        total = torch.as_tensor(self.inferer(images, network)).float().softmax(dim=1)
        for matrix in self.matrices:
            probabilities = torch.as_tensor(self.inferer(_warp(images, matrix), network)).float().softmax(dim=1)
            probabilities = _warp(probabilities, torch.linalg.inv(matrix))
            probabilities[:, 0] += 1.0 - probabilities.sum(dim=1)  # warped in from outside the ROI: background
            total = total + probabilities
        return (total / (1 + len(self.matrices))).clamp_min(torch.finfo(torch.float32).tiny).log()


def best_plane(labels: np.ndarray) -> int:
    """The y index of ``(X, Y, Z)`` labels {0, 1, 2} below which posterior (2) and from which anterior (1) voxels
    disagree least with the labels (anterior voxels below it plus posterior ones from it on)."""
    anterior = (labels == 1).sum(axis=(0, 2))
    posterior = (labels == 2).sum(axis=(0, 2))
    below = np.concatenate([[0], np.cumsum(anterior)])
    above = posterior.sum() - np.concatenate([[0], np.cumsum(posterior)])
    return int(np.argmin(below + above))


def split_by_plane(labels: np.ndarray, cut: int | None = None) -> np.ndarray:
    """``(X, Y, Z)`` labels {0, 1, 2} -> the same hippocampus, posterior (2) below y index ``cut``, anterior (1) from
    it on; ``cut`` defaults to the labels' own :func:`best_plane`."""
    cut = best_plane(labels) if cut is None else cut
    y = np.arange(labels.shape[1])[None, :, None]
    return np.where(labels > 0, np.where(y < cut, 2, 1), 0).astype(labels.dtype)


def _segment(runs: list[Path], views: list[str], fold: int, rows: list[dict], tta: str, out: Path) -> pd.DataFrame:
    checkpoints = [str(run / f"fold_{fold}" / "checkpoints" / "best.pt") for run in runs]
    segmenter = segmenter_from_bundle(
        overrides={"mode": "precropped", "device": "$torch.device('cpu')", "ckpt_paths": checkpoints,
                   "ckpt_views": views, "ensemble": len(runs) > 1}
    )  # fmt: skip
    if tta != "none":
        segmenter.inferer = AugmentedInferer(segmenter.inferer, TTA_SETS[tta])
    start = time.perf_counter()
    written = segmenter.run(rows, out / f"{tta}_fold_{fold}", progress=False)
    seconds = (time.perf_counter() - start) / len(rows)
    if written.failures:
        raise ValueError(f"fold {fold}: segmentation failed for {written.failures}")
    scored = pd.DataFrame(evaluate_files([{**r, "pred": written.label_maps[r[SUBJECT_ID]]} for r in rows]))
    return scored.assign(lever=tta, fold=fold, seconds_per_scan=seconds)


def _cut(plain: pd.DataFrame, rows: list[dict], out: Path) -> list[pd.DataFrame]:
    """The plain predictions split by one plane, their own best (``cut``) or the label's (``oracle cut``, a bound:
    what a perfect head/body boundary would give with the same hippocampus), written next to them and scored."""
    preds = plain.set_index(SUBJECT_ID)["pred"]
    items: dict[str, list[dict]] = {"cut": [], "oracle cut": []}
    for row in rows:
        image = nib.load(preds[row[SUBJECT_ID]])
        labels = np.asarray(image.dataobj).astype(np.uint8)
        truth = np.asarray(nib.load(row["label"]).dataobj).astype(np.uint8)
        for lever, cut in (("cut", None), ("oracle cut", best_plane(truth))):
            path = out / lever.replace(" ", "_") / f"{row[SUBJECT_ID]}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(split_by_plane(labels, cut), image.affine, image.header), path)
            items[lever].append({**row, "pred": str(path)})
    fold = plain["fold"].iloc[0]
    return [
        pd.DataFrame(evaluate_files(found)).assign(lever=lever, fold=fold, seconds_per_scan=np.nan)
        for lever, found in items.items()
    ]


def _markdown(table: pd.DataFrame, command: str) -> str:
    lines = [
        "# Inference-only levers on the cross-validation (issue 14)", "", f"`{command}`", "",
        "| lever | scans | binary DSC | anterior | posterior | s/scan | Δ binary (higher/lower, p) | "
        "Δ anterior | Δ posterior |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    plain = table[table.lever == "none"].set_index([SUBJECT_ID])
    for lever, group in table.groupby("lever", sort=False):
        group = group.set_index(SUBJECT_ID)
        cells = [lever, str(len(group))] + [f"{group[m].mean():.4f}" for m in METRICS]
        cells.append("" if group.seconds_per_scan.isna().all() else f"{group.seconds_per_scan.mean():.2f}")
        for metric in METRICS:
            if lever == "none":
                cells.append("")
                continue
            diff = group[metric] - plain.loc[group.index, metric]
            p = wilcoxon(diff).pvalue if (diff != 0).any() else 1.0
            cells.append(f"{diff.mean():+.4f} ({(diff > 0).sum()}/{(diff < 0).sum()}, p {p:.2g})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="`hippogan cv` output folders (members)")
    parser.add_argument("--views", nargs="+", help="each run's view (default: sagittal for all)")
    parser.add_argument("--manifest", type=Path, required=True, help="the manifest the runs were trained with")
    parser.add_argument("--dataset-dir", type=Path, required=True)
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--tta", nargs="*", default=sorted(TTA_SETS), choices=sorted(TTA_SETS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference_levers.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    views = args.views or ["sagittal"] * len(args.runs)
    if len(views) != len(args.runs):
        raise ValueError(f"--views: give one view per run ({len(args.runs)}), got {views}")
    work = Path("runs/inference_levers") / args.out.stem
    workflow = build_train_workflow(args.dataset_dir, work, manifest=args.manifest)
    datalist = workflow.parser.get_parsed_content("datalist")
    tables = []
    for fold in args.folds:
        rows = select_folds(datalist, folds=[fold])
        plain = _segment(args.runs, views, fold, rows, "none", work)
        tables += [plain, *_cut(plain, rows, work / f"cut_fold_{fold}")]
        tables += [_segment(args.runs, views, fold, rows, tta, work) for tta in args.tta]
        logger.info("fold %d done", fold)
    table = pd.concat(tables, ignore_index=True)
    command = "python benchmarks/bench_inference_levers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = _markdown(table, command)
    write_results(args.out, text, table)
    logger.info("%s\nwrote %s", text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
