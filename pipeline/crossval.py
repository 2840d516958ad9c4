"""k-fold cross-validation of the bundle's training (``hippogan cv``), as in the paper (ten folds, Sect. 3.3).

For each fold k: train with ``val_fold=k`` (:func:`hippogan.pipeline.train_cli.run_training`, run folder
``OUTPUT_DIR/fold_k``), segment the fold's scans with the best checkpoint's generator through the bundle's
inference config (:func:`hippogan.pipeline.segmenter.segmenter_from_bundle` with the training run's
``network_def`` and checkpoint, ``"precropped"`` mode, largest-component clean-up unless ``lcc=False``), which
writes the label maps as NIfTI on each input's own grid
(``fold_k/predictions/<subject_id>.nii.gz``), and score them against the manifest's labels with
:mod:`hippogan.pipeline.evaluation` (``fold_k/evaluation/``). Then one table:

- ``cv_per_case.csv``: every case of every fold (``fold`` column added);
- ``cv_summary.csv``: one row a fold (mean of each metric over its cases, ``n_cases``), then ``mean`` and
  ``std`` (sample std, ddof 1) of the fold means (``n_cases`` of the ``mean`` row: all cases).

The fold's volumes validate the training (``best.pt`` is picked on their ROI Dice), so these scores are
cross-validation scores as in the paper, not a held-out test.

``--resume`` continues a stopped cross-validation: a fold with ``checkpoints/last.pt`` resumes from it (a
finished one is only segmented and scored again), the others train.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .checkpoint import load_checkpoint
from .evaluation import evaluate_files, summarise, write_evaluation
from .file_io import atomic_path
from .manifest import FOLD, SUBJECT_ID, select_folds
from .segmenter import segmenter_from_bundle
from .train_cli import add_train_arguments, build_train_workflow, parse_overrides, run_training

__all__ = ["CV_PER_CASE_CSV", "CV_SUMMARY_CSV", "add_parser", "fold_table", "run_crossval"]

logger = logging.getLogger(__name__)

CV_PER_CASE_CSV = "cv_per_case.csv"
CV_SUMMARY_CSV = "cv_summary.csv"


def fold_table(per_case: pd.DataFrame) -> pd.DataFrame:
    """Summarise per-case metrics by fold: one row a fold (metric means, ``n_cases``), then ``mean`` and ``std``.

    Args:
        per_case: rows of :func:`~hippogan.pipeline.evaluation.evaluate_files` with a ``fold`` column.

    Returns:
        A frame indexed by ``fold`` (the fold numbers as strings, then ``"mean"`` and ``"std"`` of the fold
        means); NaN metrics (e.g. HD95 of an empty prediction) are skipped in each fold's mean; ``n_cases``
        of the ``mean`` row is the number of all cases.

    Raises:
        ValueError: ``per_case`` is empty or has no ``fold`` column.
    """
    if per_case.empty or FOLD not in per_case:
        raise ValueError(
            f"fold_table: expected per-case rows with a '{FOLD}' column, got columns {list(per_case.columns)}."
        )
    rows = {}
    for fold, cases in per_case.groupby(FOLD, sort=True):
        summary = summarise(cases.to_dict("records"))
        rows[str(fold)] = {**summary["mean"].to_dict(), "n_cases": len(cases)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    metrics = table.drop(columns="n_cases")
    table.loc["mean"] = {**metrics.mean().to_dict(), "n_cases": table["n_cases"].sum()}
    table.loc["std"] = {**metrics.std().to_dict(), "n_cases": np.nan}
    table.index.name = FOLD
    return table


def run_crossval(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    folds: int | Sequence[int] = 10,
    configs: Sequence[str | os.PathLike] = (),
    overrides: Mapping[str, Any] | None = None,
    bundle_root: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    classes: Sequence[int] | None = (1, 2),
    lcc: bool = True,
    resume: bool = False,
) -> pd.DataFrame:
    """Train and evaluate each fold, then write the cross-validation tables (see the module docstring).

    Args:
        dataset_dir: root of the manifest's relative paths.
        output_dir: parent of the ``fold_k`` run folders and of the two tables.
        folds: ``N`` runs folds ``0..N-1``; a sequence runs those folds.
        configs, overrides, bundle_root, manifest: as in :func:`hippogan.pipeline.train_cli.build_train_workflow`.
        classes: label values also scored on their own (see :func:`~hippogan.pipeline.evaluation.evaluate_files`).
        lcc: keep the largest connected hippocampus component, as the bundle's inference does.
        resume: a fold whose ``fold_k/checkpoints/last.pt`` exists continues from it (a finished fold is not
            trained again, only segmented and scored); the others start afresh. False: every fold trains.

    Returns:
        the summary table (:func:`fold_table`), also written to ``OUTPUT_DIR/cv_summary.csv``.

    Raises:
        ValueError: bad input (a fold absent from the manifest, a bad manifest row, ...), naming the file or key.
    """
    fold_list = list(range(folds)) if isinstance(folds, int) else [int(k) for k in folds]
    if not fold_list:
        raise ValueError(f"folds: expected a positive count or a list of folds, got {folds!r}.")
    output_dir = Path(output_dir)
    per_case = []
    for fold in fold_list:
        fold_dir = output_dir / f"fold_{fold}"
        logger.info("fold %d: training in %s", fold, fold_dir)
        last = fold_dir / "checkpoints" / "last.pt"
        fold_overrides, finished = dict(overrides or {}), False
        if resume and last.is_file():
            workflow = build_train_workflow(dataset_dir, fold_dir, fold, configs, overrides, bundle_root, manifest)
            epochs = int(load_checkpoint(last)["engine"]["epoch"])
            finished = epochs >= int(workflow.parser.get_parsed_content("max_epochs"))
            action = "scoring only" if finished else "resuming"
            logger.info("fold %d: %s from %s (epoch %d)", fold, action, last, epochs)
            fold_overrides["resume"] = True
        if not finished:
            workflow = run_training(dataset_dir, fold_dir, fold, configs, fold_overrides, bundle_root, manifest)
        parser = workflow.parser
        checkpoints = Path(parser.get_parsed_content("ckpt_dir"))
        checkpoint = checkpoints / "best.pt" if (checkpoints / "best.pt").is_file() else checkpoints / "last.pt"
        inference = {
            "network_def": parser.get("network_def"),  # the trained network's config
            "ckpt_path": str(checkpoint),
            "mode": "precropped",
            "lcc": lcc,
            "roi_size": parser.get_parsed_content("roi_size"),
            "context": parser.get("train#preprocessing#context", 0),  # 2.5D: the neighbouring planes it trained with
            "ckpt_views": [parser.get("view", "sagittal")],
            "device": f"$torch.device({str(parser.get_parsed_content('device'))!r})",
        }
        if parser.get("network_def#spatial_dims", 2) == 3:  # a 3D network sees the whole ROI, as in validation
            inference.update({"inferer": parser.get("validate#inferer"), "evaluator#skip_empty": False,
                              "evaluator#channels_last": False})  # fmt: skip
        segmenter = segmenter_from_bundle(parser.get_parsed_content("bundle_root"), overrides=inference)
        rows = select_folds(parser.get_parsed_content("datalist"), folds=[fold])
        written = segmenter.run(rows, fold_dir / "predictions", progress=False)
        if written.failures:
            raise ValueError(f"fold {fold}: segmentation failed for {written.failures}")
        pairs = [{**row, "pred": written.label_maps[row[SUBJECT_ID]]} for row in rows]
        scored = evaluate_files(pairs, classes=classes)
        write_evaluation(scored, fold_dir / "evaluation")
        per_case += [{FOLD: fold, "checkpoint": checkpoint.name, **row} for row in scored]
        logger.info("fold %d: %d cases scored with %s", fold, len(scored), checkpoint)
    table = pd.DataFrame(per_case)
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / CV_PER_CASE_CSV) as tmp:
        table.to_csv(tmp, index=False)
    summary = fold_table(table)
    with atomic_path(output_dir / CV_SUMMARY_CSV) as tmp:
        summary.to_csv(tmp)
    return summary


def _cv(args: argparse.Namespace) -> int:
    """``hippogan cv``: exit 0 on success, 2 on bad input."""
    try:
        summary = run_crossval(
            args.dataset_dir,
            args.output_dir,
            folds=args.fold_list if args.fold_list else args.folds,
            configs=args.config,
            overrides=parse_overrides(args.overrides),
            bundle_root=args.bundle_root,
            manifest=args.manifest,
            classes=args.classes,
            lcc=not args.no_lcc,
            resume=args.resume,
        )
    except ValueError as error:
        logger.error("%s", error)
        return 2
    columns = [c for c in ("dsc", "dsc_class1", "dsc_class2", "hd95", "n_cases") if c in summary]
    logger.info("cross-validation:\n%s", summary[columns].to_string(float_format=lambda v: f"{v:.4f}"))
    logger.info("wrote %s and %s", Path(args.output_dir) / CV_SUMMARY_CSV, Path(args.output_dir) / CV_PER_CASE_CSV)
    return 0


def _int_list(text: str) -> list[int]:
    """argparse type of ``--fold-list``: ``"0,3"`` -> ``[0, 3]``."""
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``hippogan cv``."""
    parser = subparsers.add_parser(
        "cv",
        help="k-fold cross-validation: train each fold, segment and score its scans, one summary table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(parser)
    parser.add_argument("--folds", type=int, default=10, help="run folds 0..N-1 of the manifest (default: 10)")
    parser.add_argument(
        "--fold-list", type=_int_list, metavar="K,K,...", help="run only these folds, e.g. 0,3 (instead of --folds)"
    )
    parser.add_argument(
        "--classes", type=_int_list, default=[1, 2], metavar="C,C,...",
        help="label values also scored on their own (default: 1,2; '' scores the binary mask only)",
    )  # fmt: skip
    parser.add_argument(
        "--no-lcc", action="store_true", help="score the raw argmax, without the largest-component clean-up"
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="continue a stopped cross-validation: folds with a checkpoints/last.pt resume from it (finished folds "
        "are only segmented and scored again), the others train",
    )  # fmt: skip
    parser.set_defaults(func=_cv)
