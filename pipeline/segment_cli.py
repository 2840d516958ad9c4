"""``hippogan segment``: segment T1 scans end to end, with a QC picture per scan and one report per run.

The segmenter is the bundle's (:func:`~hippogan.pipeline.inference.segmenter_from_bundle` on
``configs/inference.yaml``: the same network, weights and options as ``monai.bundle run``), so
``--model`` and ``--device`` only override that config's ``ckpt_path`` and ``device``.

Outputs in ``--out``:

- ``<subject_id>.nii.gz``: uint8 label map (0 background, 1 anterior, 2 posterior hippocampus) on the
  input's grid and affine (:meth:`~hippogan.pipeline.inference.Segmenter.segment_many`);
- ``qc/<subject_id>.png``: :func:`~hippogan.pipeline.qc.qc_figure`, the three orthogonal planes through
  each hippocampus with the segmentation outlined and its volumes printed;
- ``volumes.csv``: :data:`SEGMENT_COLUMNS`, one row per scan and side (volumes in mm³; ``flag`` from
  :func:`~hippogan.pipeline.qc.volume_flags`, empty when plausible), one ``failed`` row per failed scan;
- ``report.html``: :func:`~hippogan.pipeline.report.write_report`, the table with QC thumbnails embedded
  (one file, readable offline).

``--demo`` segments nilearn's MNI152 2009 T1 template (1 mm whole brain, shipped in nilearn's package
data), written first to ``<out>/input/mni152.nii.gz``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from hippogan.pipeline.inference import (
    DEFAULT_BUNDLE,
    VOLUME_COLUMNS,
    VOLUMES_CSV,
    Segmentation,
    find_inputs,
    segmenter_from_bundle,
    write_volumes_csv,
)
from hippogan.pipeline.qc import qc_figure, volume_flags
from hippogan.pipeline.report import ROW_KEYS, write_report
from hippogan.transforms import IMAGE, scan_loader

__all__ = ["DEMO_SUBJECT", "DEVICES", "QC_DIR", "REPORT_HTML", "SEGMENT_COLUMNS", "add_parser", "write_demo_input"]

logger = logging.getLogger(__name__)

_AFTER = VOLUME_COLUMNS.index("posterior_mm3") + 1
SEGMENT_COLUMNS = (*VOLUME_COLUMNS[:_AFTER], "flag", *VOLUME_COLUMNS[_AFTER:])
"""Columns of the run's ``volumes.csv``: :data:`~hippogan.pipeline.inference.VOLUME_COLUMNS` plus ``flag``."""
QC_DIR = "qc"
"""Sub-folder of ``--out`` holding the QC pictures ``<subject_id>.png``."""
REPORT_HTML = "report.html"
DEMO_SUBJECT = "mni152"
"""Subject id (and input file stem) of the ``--demo`` scan."""
DEVICES = ("auto", "cpu", "cuda")

_DESCRIPTION = """\
Segment the hippocampus in T1 scans with the bundle's model (configs/inference.yaml and its weights)
and write, in --out: one label map per scan (<subject>.nii.gz: 0 background, 1 anterior, 2 posterior;
the input's grid and affine), one QC picture per scan (qc/<subject>.png: three planes through each
hippocampus, outlined, volumes printed), volumes.csv (subject, side, mode, total_mm3, anterior_mm3,
posterior_mm3, flag, status, reason; mm³) and report.html (the table with QC thumbnails; one file,
readable offline).

inputs: NIfTI files, folders of them, DICOM series folders (a folder of .dcm files is one series; a
folder of series sub-folders holds several) or a manifest CSV (with --dataset-dir). A scan that is a
whole brain (field of view over 100 mm, registered to MNI space) is cropped around both hippocampi;
a smaller one is taken as a hippocampus crop (e.g. MSD).

flag: a hippocampus volume outside 1,500-6,000 mm³, a wide plausible adult range: look at its QC
picture (a quality-control flag, not a diagnosis).

--demo: segment nilearn's MNI152 whole-brain T1 template (no data of your own needed).

A scan that fails is reported with its reason and the others go on.
Exit codes: 0 all scans segmented, 1 some scans failed (the others are written), 2 bad arguments.
"""


def write_demo_input(out_dir: str | Path) -> Path:
    """Write nilearn's MNI152 2009 T1 template (1 mm, 197 x 233 x 189 voxels, RAS) as the demo's input scan.

    Args:
        out_dir: the run's output folder; the scan goes to ``<out_dir>/input/mni152.nii.gz``.

    Returns:
        The written NIfTI path.

    Raises:
        ValueError: the file cannot be written (the message names it).
    """
    from nilearn.datasets import load_mni152_template

    path = Path(out_dir) / "input" / f"{DEMO_SUBJECT}.nii.gz"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(load_mni152_template(resolution=1), path)
    except OSError as error:
        raise ValueError(f"cannot write the demo scan {path}: {error}") from error
    return path


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    """Config ids of ``inference.yaml`` to override (``auto`` keeps the config's device: CUDA when available)."""
    overrides = {}
    if args.model is not None:
        overrides["ckpt_path"] = str(args.model)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu or auto.")
    if args.device != "auto":
        overrides["device"] = f"$torch.device({'cuda:0' if args.device == 'cuda' else 'cpu'!r})"
    return overrides


def _qc_writer(qc_dir: Path, pictures: dict[str, Path]) -> Callable[[Segmentation, Path], None]:
    """An ``on_result`` hook: draw each scan's QC picture into ``qc_dir`` and record it in ``pictures``."""

    def write_qc(result: Segmentation, label_map: Path) -> None:
        image = np.asarray(scan_loader(IMAGE)({IMAGE: str(result.source)})[IMAGE])  # the label map's grid
        volumes = {s.side: {k: getattr(s, k) for k in ("total_mm3", "anterior_mm3", "posterior_mm3")}
                   for s in result.sides}
        pictures[result.subject] = qc_figure(
            image, result.label_map, result.affine, qc_dir / f"{result.subject}.png", title=result.subject,
            volumes=volumes, whole_brain=result.mode == "whole_brain",
        )  # fmt: skip

    return write_qc


def _flagged(row: dict[str, object]) -> dict[str, object]:
    """``row`` with its ``flag``: :func:`volume_flags` of ``total_mm3`` for a segmented side, else empty."""
    ok = row.get("status") == "ok"
    return {**row, "flag": volume_flags(float(row["total_mm3"])) if ok else ""}


def _run(args: argparse.Namespace) -> int:
    """Run ``hippogan segment``; returns the exit code."""
    start = time.perf_counter()
    try:
        if args.demo == bool(args.inputs):
            raise ValueError("give INPUT paths or --demo (not both).")
        paths = [write_demo_input(args.out)] if args.demo else args.inputs
        inputs = find_inputs(paths, dataset_dir=args.dataset_dir)
        segmenter = segmenter_from_bundle(args.bundle, overrides=_overrides(args))
        load_s = time.perf_counter() - start
        pictures: dict[str, Path] = {}
        out_dir = Path(args.out)
        summary = segmenter.segment_many(
            inputs, out_dir, progress=not args.no_progress, on_result=_qc_writer(out_dir / QC_DIR, pictures)
        )
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    rows = [_flagged(row) for row in summary.rows]
    write_volumes_csv(rows, out_dir / VOLUMES_CSV, columns=SEGMENT_COLUMNS)
    report_rows = [{**{k: row[k] for k in ROW_KEYS if k in row}, "qc_png": pictures.get(row["subject"])}
                   for row in rows]
    report = write_report(report_rows, out_dir / REPORT_HTML, title=f"hippogan segment: {out_dir.name}")
    flagged = sorted({str(row["subject"]) for row in rows if row["flag"]})
    if flagged:
        logger.warning("volume flagged (look at the QC picture): %s", ", ".join(flagged))
    logger.info(
        "segment: %d ok, %d failed, %.1f s (model load %.1f s) on %s; outputs in %s (%s, %s)",
        len(summary.label_maps), len(summary.failures), time.perf_counter() - start, load_s,
        segmenter.device, out_dir, VOLUMES_CSV, report.name,
    )  # fmt: skip
    return 1 if summary.failures else 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hippogan segment`` on ``subparsers``; returns its parser."""
    parser = subparsers.add_parser(
        "segment",
        help="segment T1 scans end to end: label maps, QC pictures, volumes.csv with flags, report.html",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="*", type=Path, metavar="INPUT",
        help="NIfTI file, folder of them, DICOM series folder or manifest CSV",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    parser.add_argument("--demo", action="store_true", help="segment nilearn's MNI152 whole-brain T1 template")
    parser.add_argument("--model", type=Path, help="generator weights (default: the bundle's models/model.pt)")
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="where the network runs (default: auto, CUDA when available)"
    )
    parser.add_argument("--dataset-dir", type=Path, help="root of a manifest's relative paths")
    parser.add_argument(
        "--bundle", type=Path, default=DEFAULT_BUNDLE, help=f"bundle folder (default: {DEFAULT_BUNDLE})"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
    return parser
