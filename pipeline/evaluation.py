"""Evaluate predicted label files against references and write the metric tables (``hippogan evaluate``).

Predictions are NIfTI label maps in the space of their reference (same shape and affine). Pairs come
from a manifest (``subject_id,image,label,fold``; prediction ``PRED_DIR/<subject_id>.nii.gz``) or from a
reference folder (prediction with the same file name). Outputs, in ``--out``:

- ``metrics_per_case.csv``: one row a case (``subject_id, pred, label`` then the metrics of
  :func:`hippogan.pipeline.metrics.evaluate_case`);
- ``metrics_summary.csv`` / ``metrics_summary.json``: per metric the mean and sample std (ddof 1) over
  the cases where it is defined, ``n`` such cases and ``n_undefined`` NaN cases (JSON: NaN as null).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from monai.utils import CommonKeys

from .file_io import NIFTI_SUFFIXES, atomic_path, nifti_stem, safe_file_stem
from .manifest import FOLD, SUBJECT_ID, load_manifest, select_folds
from .manifest_validation import LABEL_VALUES
from .metrics import METRICS, evaluate_case

__all__ = [
    "PER_CASE_CSV",
    "SUMMARY_CSV",
    "SUMMARY_JSON",
    "add_parser",
    "evaluate_files",
    "pairs_from_manifest",
    "pairs_from_ref_dir",
    "summarise",
    "write_evaluation",
]

logger = logging.getLogger(__name__)

PER_CASE_CSV = "metrics_per_case.csv"
SUMMARY_CSV = "metrics_summary.csv"
SUMMARY_JSON = "metrics_summary.json"
AFFINE_ATOL = 1e-3
"""Largest difference (mm, or unitless for rotation terms) tolerated between the two affines of a pair."""


def _subject_id(path: str | PathLike) -> str:
    """Return the file name of ``path`` without its NIfTI suffix."""
    name = Path(path).name
    return nifti_stem(name) or name


def _load_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return the label array ``(H, W, D)`` of a NIfTI file and its 4x4 affine (mm)."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D label map, got shape {data.shape}")
    return data, img.affine


def _evaluate_pair(pred_path: Path, ref_path: Path, classes: Sequence[int] | None) -> dict[str, float]:
    """Load one prediction/reference pair, check they share a grid and hold only known labels, and score it."""
    pred, pred_affine = _load_labels(pred_path)
    ref, ref_affine = _load_labels(ref_path)
    for path, labels in ((pred_path, pred), (ref_path, ref)):
        unknown = sorted({int(v) if float(v).is_integer() else v for v in np.unique(labels).tolist()} - LABEL_VALUES)
        if unknown:
            raise ValueError(
                f"{path} holds label values {unknown[:5]} outside {sorted(LABEL_VALUES)} (0 background, 1 anterior, "
                "2 posterior); map them first (hippogan manifest --label-map)."
            )
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred_path} has shape {pred.shape} but reference {ref_path} has shape {ref.shape}")
    if not np.allclose(pred_affine, ref_affine, atol=AFFINE_ATOL):
        raise ValueError(
            f"prediction {pred_path} and reference {ref_path} have different affines "
            f"(resample the prediction to the reference grid):\n{pred_affine}\nvs\n{ref_affine}"
        )
    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(ref_affine))
    return evaluate_case(pred, ref, spacing=spacing, classes=classes)


def evaluate_files(
    pairs: Iterable[Mapping[str, Any] | tuple[str | PathLike, str | PathLike]],
    classes: Sequence[int] | None = (1, 2),
    failures: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Score NIfTI prediction/reference pairs; voxel spacing (mm) comes from the reference affine.

    Args:
        pairs: ``(pred_path, ref_path)`` tuples, or mappings with keys ``"pred"`` and ``"label"``
            (e.g. manifest rows with a prediction path added) and optionally ``"subject_id"``.
        classes: label values scored on their own besides ``label > 0`` (see ``evaluate_case``).
        failures: when given, a pair that cannot be scored (unreadable file, other grid, unknown label values)
            is recorded here (subject id -> reason) and the others go on; when ``None`` it raises.

    Returns:
        One row a pair: ``subject_id`` (default: the reference file name without suffix), ``pred`` and
        ``label`` paths as strings, then the metrics of ``evaluate_case``.

    Raises:
        ValueError: if a mapping lacks ``pred``/``label``, or a pair differs in shape or affine
            (the message names both files).
    """
    rows = []
    for pair in pairs:
        if isinstance(pair, Mapping):
            missing = [k for k in ("pred", "label") if k not in pair]
            if missing:
                raise ValueError(f"pair {dict(pair)} lacks key(s) {missing}; expected 'pred' and 'label' paths")
            pred_path, ref_path = Path(pair["pred"]), Path(pair["label"])
            subject = str(pair.get("subject_id", _subject_id(ref_path)))
        else:
            pred_path, ref_path = (Path(p) for p in pair)
            subject = _subject_id(ref_path)
        try:
            metrics = _evaluate_pair(pred_path, ref_path, classes)
        except Exception as error:  # one bad case fails alone when the caller collects failures
            if failures is None:
                raise
            failures[subject] = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            logger.error("%s: cannot be scored: %s", subject, failures[subject])
            continue
        logger.debug("%s: dsc %.4f, hd95 %.2f mm", subject, metrics["dsc"], metrics["hd95"])
        rows.append({"subject_id": subject, "pred": str(pred_path), "label": str(ref_path), **metrics})
    return rows


def _check_predictions(rows: list[dict[str, Any]], pred_dir: Path) -> list[dict[str, Any]]:
    """Raise a ``ValueError`` listing every row whose ``pred`` file is missing; return ``rows``."""
    missing = [r["subject_id"] for r in rows if not Path(r["pred"]).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} prediction(s) missing in {pred_dir}: {', '.join(missing)}")
    return rows


def pairs_from_manifest(
    pred_dir: str | PathLike, manifest: str | PathLike, dataset_dir: str | PathLike, fold: int | None = None
) -> list[dict[str, Any]]:
    """Match predictions ``pred_dir/<subject_id>.nii.gz`` to the manifest's reference labels.

    Args:
        pred_dir: folder of predicted label maps.
        manifest: CSV with columns ``subject_id,image,label,fold``; paths relative to ``dataset_dir``.
        dataset_dir: root the manifest paths resolve against.
        fold: keep only the rows of this fold (the held-out fold of a cross-validation run).

    Returns:
        The manifest rows (``subject_id, image, label, fold``) with ``"pred"`` added, for
        :func:`evaluate_files`.

    Raises:
        ValueError: if the manifest is malformed (see ``load_manifest``), has no row, lists a subject twice,
            no row has ``fold``, a row has no label, or any prediction is missing (all are listed).
    """
    pred_dir = Path(pred_dir)
    rows = load_manifest(manifest, dataset_dir)
    if not rows:
        raise ValueError(f"manifest {manifest}: no rows below its header; nothing to evaluate.")
    counts = Counter(str(r[SUBJECT_ID]) for r in rows)
    duplicates = sorted(subject for subject, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(f"manifest {manifest}: subject ids listed more than once: {', '.join(duplicates)}.")
    if fold is not None:
        folds = sorted({r[FOLD] for r in rows})
        rows = select_folds(rows, folds=[fold])
        if not rows:
            raise ValueError(f"manifest {manifest} has no row with fold {fold}; folds present: {folds}")
    unlabelled = [r[SUBJECT_ID] for r in rows if CommonKeys.LABEL not in r]
    if unlabelled:
        raise ValueError(f"manifest {manifest}: no reference label for {', '.join(unlabelled)}")
    rows = [{**r, "pred": pred_dir / f"{safe_file_stem(str(r[SUBJECT_ID]))}.nii.gz"} for r in rows]
    return _check_predictions(rows, pred_dir)


def pairs_from_ref_dir(pred_dir: str | PathLike, ref_dir: str | PathLike) -> list[dict[str, Any]]:
    """Match each NIfTI file of ``ref_dir`` to the prediction of the same file name in ``pred_dir``.

    Returns:
        Rows ``{"subject_id", "pred", "label"}`` sorted by file name, for :func:`evaluate_files`.

    Raises:
        ValueError: if ``ref_dir`` holds no NIfTI file, or any prediction is missing (all are listed).
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    refs = sorted(p for p in ref_dir.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if not refs:
        raise ValueError(f"reference folder {ref_dir} holds no NIfTI file (*.nii.gz, *.nii)")
    rows = [{"subject_id": _subject_id(r), "pred": pred_dir / r.name, "label": r} for r in refs]
    return _check_predictions(rows, pred_dir)


def _metric_columns(columns: Iterable[str]) -> list[str]:
    """Return the columns that hold metrics (``<metric>`` or ``<metric>_class<c>``)."""
    return [c for c in columns if c.split("_class")[0] in METRICS]


def summarise(per_case_rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Summarise per-case metrics, skipping undefined (NaN) values.

    Returns:
        A frame indexed by metric with columns ``mean``, ``std`` (sample std, ddof 1; NaN under 2
        values), ``n`` (cases where defined) and ``n_undefined`` (NaN cases).
    """
    table = pd.DataFrame(list(per_case_rows))
    metrics = table[_metric_columns(table.columns)].astype(float)
    summary = pd.DataFrame({"mean": metrics.mean(), "std": metrics.std(), "n": metrics.count()})
    summary["n_undefined"] = len(table) - summary["n"]
    summary.index.name = "metric"
    return summary


def _json_float(value: float) -> float | None:
    """Return ``value`` as a float, or ``None`` for NaN (JSON has no NaN)."""
    return None if math.isnan(value) else float(value)


def write_evaluation(per_case_rows: Sequence[Mapping[str, Any]], out_dir: str | PathLike) -> dict[str, Path]:
    """Write the per-case table and the summary (CSV and JSON) into ``out_dir`` (created if needed).

    Args:
        per_case_rows: rows of :func:`evaluate_files` (or any rows holding ``evaluate_case`` metrics).
        out_dir: output folder.

    Returns:
        ``{"per_case": metrics_per_case.csv, "summary_csv": metrics_summary.csv,
        "summary_json": metrics_summary.json}`` paths.

    Raises:
        ValueError: if there are no rows.
    """
    if not per_case_rows:
        raise ValueError(f"no case to write into {out_dir}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"per_case": out_dir / PER_CASE_CSV, "summary_csv": out_dir / SUMMARY_CSV, "summary_json": out_dir / SUMMARY_JSON}
    with atomic_path(paths["per_case"]) as tmp:
        pd.DataFrame(list(per_case_rows)).to_csv(tmp, index=False)
    summary = summarise(per_case_rows)
    with atomic_path(paths["summary_csv"]) as tmp:
        summary.to_csv(tmp)
    metrics = {
        name: {
            "mean": _json_float(row["mean"]),
            "std": _json_float(row["std"]),
            "n": int(row["n"]),
            "n_undefined": int(row["n_undefined"]),
        }
        for name, row in summary.iterrows()
    }
    with atomic_path(paths["summary_json"]) as tmp:
        tmp.write_text(json.dumps({"n_cases": len(per_case_rows), "metrics": metrics}, indent=2))
    return paths


def _run(args: argparse.Namespace) -> int:
    """Run ``hippogan evaluate``: match pairs, score them, write the tables, log the summary (exit 2 on bad input)."""
    try:
        if args.manifest is not None and args.dataset_dir is None:
            raise ValueError("--manifest needs --dataset-dir (the root of the manifest's relative paths)")
        if args.ref_dir is not None and args.fold is not None:
            raise ValueError("--fold applies to --manifest only, not to --ref-dir")
        if args.manifest is not None:
            pairs = pairs_from_manifest(args.pred_dir, args.manifest, args.dataset_dir, args.fold)
        else:
            pairs = pairs_from_ref_dir(args.pred_dir, args.ref_dir)
        failures: dict[str, str] = {}
        rows = evaluate_files(pairs, classes=args.classes, failures=failures)
        if not rows:
            raise ValueError(f"no case could be scored: {'; '.join(f'{s}: {r}' for s, r in failures.items())}")
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    paths = write_evaluation(rows, args.out)
    if failures:
        logger.error("%d case(s) could not be scored: %s", len(failures), "; ".join(f"{s}: {r}" for s, r in failures.items()))
    for name, row in summarise(rows).iterrows():
        logger.info("%-16s %.4f ± %.4f (n=%d)", name, row["mean"], row["std"], row["n"])
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 1 if failures else 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hippogan evaluate`` on ``subparsers``; returns its parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted label maps against references (DSC, SEN, PPV, Jaccard, HD95, ASD)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pred-dir", type=Path, required=True, help="folder of predicted label maps (NIfTI)")
    refs = parser.add_mutually_exclusive_group(required=True)
    refs.add_argument("--manifest", type=Path, help="CSV subject_id,image,label,fold; predictions PRED_DIR/<subject_id>.nii.gz")
    refs.add_argument("--ref-dir", type=Path, help="folder of reference label maps, matched by file name")
    parser.add_argument("--dataset-dir", type=Path, help="root of the manifest's relative paths (needed with --manifest)")
    parser.add_argument("--fold", type=int, help="evaluate only this manifest fold")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the metric tables")
    parser.add_argument(
        "--classes", type=int, nargs="*", default=[1, 2], help="label values also scored on their own (default: 1 2; none: binary only)"
    )
    parser.set_defaults(func=_run)
    return parser
