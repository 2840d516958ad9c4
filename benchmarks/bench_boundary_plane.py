"""Where the head/body boundary falls (issue 14): how well the CV models place the anterior/posterior boundary
plane, and whether the hippocampus's shape predicts it any better.

The MSD labels split the hippocampus into anterior (1) and posterior (2) at about one plane of the scan's grid
(one index along its y axis; :func:`bench_inference_levers.best_plane`); putting each prediction's boundary at
the label's own plane would add about +0.021 anterior and posterior DSC (``inference_levers.md``). For each
scan of the given ``hippogan cv`` runs (their ``fold_k/predictions/<subject_id>.nii.gz``, each on the scan's own
grid), this benchmark reports, in slices (1 mm):

- each run's boundary error: its prediction's best plane minus the label's (mean = bias, SD, mean absolute);
- leave-one-scan-out linear predictors of the label's plane (least squares on the other scans, rounded to a
  plane): from the label's own shape (first and last hippocampus plane along y, the area-weighted centroid
  plane; what a rule such as "at 58% of the length" could use at best), from the same shape of the first run's
  prediction, from the runs' planes, and from the runs' planes plus the predicted shape.

Run from the repository root after the CV runs, e.g.::

    python benchmarks/bench_boundary_plane.py --runs runs/cv5_s20 runs/cv5_cor --manifest runs/cv5_manifest.csv \\
        --dataset-dir ../shared/data/msd_hippocampus --out benchmarks/results/boundary_plane.md
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from hippogan.pipeline.file_io import write_results
from hippogan.pipeline.manifest import SUBJECT_ID, load_manifest

__all__ = ["leave_one_out_error", "main", "shape_features"]

_spec = importlib.util.spec_from_file_location(
    "bench_inference_levers", Path(__file__).with_name("bench_inference_levers.py")
)
_levers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_levers)
best_plane = _levers.best_plane


def shape_features(labels: np.ndarray) -> tuple[float, float, float]:
    """``(X, Y, Z)`` labels -> (first, last, area-weighted centroid) y index of the hippocampus (labels > 0)."""
    area = (labels > 0).sum(axis=(0, 2))
    planes = np.flatnonzero(area)
    return float(planes[0]), float(planes[-1]), float((area * np.arange(area.size)).sum() / area.sum())


def leave_one_out_error(features: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(N, F)`` features, ``(N,)`` target -> ``(N,)`` errors of an intercept + linear least-squares fit on the
    other N - 1 rows, rounded to a whole plane, at each row."""
    design = np.column_stack([np.ones(len(target)), features])
    errors = np.empty(len(target))
    for i in range(len(target)):
        rest = np.arange(len(target)) != i
        coefficients = np.linalg.lstsq(design[rest], target[rest], rcond=None)[0]
        errors[i] = np.round(design[i] @ coefficients) - target[i]
    return errors


def _planes(runs: list[Path], manifest: Path, dataset_dir: Path) -> pd.DataFrame:
    """One row a scan: the label's plane and shape, each run's plane, the first run's predicted shape."""
    labels = {row[SUBJECT_ID]: row["label"] for row in load_manifest(manifest, dataset_dir) if "label" in row}
    predictions = [  # per run, subject -> its label map (one glob a run)
        {path.name.removesuffix(".nii.gz"): path for path in run.glob("fold_*/predictions/*.nii.gz")} for run in runs
    ]
    rows = []
    for subject in sorted(predictions[0], key=predictions[0].get):  # fold by fold
        truth = np.asarray(nib.load(labels[subject]).dataobj)
        row = {SUBJECT_ID: subject, "label": best_plane(truth)}
        row.update(zip(("label_first", "label_last", "label_centroid"), shape_features(truth)))
        for index, (run, paths) in enumerate(zip(runs, predictions)):
            predicted = np.asarray(nib.load(paths[subject]).dataobj)
            row[run.name] = best_plane(predicted)
            if index == 0:
                row.update(zip(("pred_first", "pred_last", "pred_centroid"), shape_features(predicted)))
        rows.append(row)
    return pd.DataFrame(rows)


def _error_row(title: str, error: np.ndarray) -> str:
    """A table row: ``title``, then the errors' mean (bias), SD and mean absolute value, in slices."""
    return f"| {title} | {error.mean():+.2f} | {error.std():.2f} | {np.abs(error).mean():.2f} |"


def _markdown(table: pd.DataFrame, runs: list[Path], command: str) -> str:
    names = [run.name for run in runs]
    lines = [
        "# Where the head/body boundary falls (issue 14)", "",
        f"Written by `{command}`. {len(table)} scans; the module docstring gives the method. Errors in slices "
        "(1 mm): predicted boundary plane minus the label's.", "",
        "| boundary from | bias | SD | mean absolute error |", "|---|---|---|---|",
    ]
    for name in names:
        error = table[name] - table["label"]
        lines.append(_error_row(f"{name} (its prediction)", error.to_numpy(float)))
    label_shape = ["label_first", "label_last", "label_centroid"]
    predicted_shape = ["pred_first", "pred_last", "pred_centroid"]
    predictors = {
        "the label's own shape (leave-one-out linear fit)": label_shape,
        f"{names[0]}'s predicted shape (leave-one-out)": predicted_shape,
        "the runs' planes (leave-one-out)": names,
        "the runs' planes + predicted shape (leave-one-out)": names + predicted_shape,
    }
    for title, columns in predictors.items():
        error = leave_one_out_error(table[columns].to_numpy(float), table["label"].to_numpy(float))
        lines.append(_error_row(title, error))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="`hippogan cv` output folders")
    parser.add_argument("--manifest", type=Path, required=True, help="the manifest the runs were trained with")
    parser.add_argument("--dataset-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/boundary_plane.md"))
    args = parser.parse_args(argv)
    table = _planes(args.runs, args.manifest, args.dataset_dir)
    command = "python benchmarks/bench_boundary_plane.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = _markdown(table, args.runs, command)
    write_results(args.out, text, table)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
