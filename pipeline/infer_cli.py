"""``hippogan infer``: segment scans with the bundle's inference config (the ``monai.bundle run`` code path).

The network, its weights and every option come from ``<bundle>/configs/inference.yaml``
(:func:`~hippogan.pipeline.inference.segmenter_from_bundle`); the options below override its keys.
Exit codes: 0 all scans segmented, 1 some scans failed (the others are written), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch

from hippogan.pipeline.inference import AUTO, DEFAULT_BUNDLE, VOLUMES_CSV, find_inputs, segmenter_from_bundle
from hippogan.transforms.roi import ROI_MODES

__all__ = ["add_parser"]

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Segment T1 scans with the bundle's inference config (configs/inference.yaml: network, weights, options),
the code path of `python -m monai.bundle run`; the options below override its keys.
Exit codes: 0 all scans segmented, 1 some scans failed (the others are written), 2 bad arguments.

inputs: NIfTI files, folders of them, DICOM series folders (a folder of .dcm files is one series; a
folder of series sub-folders holds several) or a manifest CSV (with --dataset-dir).

outputs in --out: <subject_id>.nii.gz (uint8 label map: 0 background, 1 anterior, 2 posterior
hippocampus; the input's shape and affine) and volumes.csv (subject, side, mode, total_mm3,
anterior_mm3, posterior_mm3, status, reason).

--mode auto picks whole_brain when the scan's field of view exceeds 100 mm along any axis
(whole-brain T1 registered to MNI space: two fixed boxes, left and right), else precropped
(a hippocampus crop such as MSD's).
"""


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """Config ids to override, as ``monai.bundle run --id value`` would."""
    overrides: dict[str, object] = {"mode": args.mode, "lcc": not args.no_lcc}
    if args.weights is not None:
        overrides["ckpt_path"] = str(args.weights)
    if args.device is not None:
        overrides["device"] = f"$torch.device({args.device!r})"
    return overrides


def _run(args: argparse.Namespace) -> int:
    """Run ``hippogan infer``; returns the exit code."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        inputs = find_inputs(args.inputs, dataset_dir=args.dataset_dir, fold=args.fold)
        start = time.perf_counter()
        segmenter = segmenter_from_bundle(args.bundle, overrides=_overrides(args))
        load_s = time.perf_counter() - start
        summary = segmenter.segment_many(inputs, args.out, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    seconds = list(summary.seconds.values())
    logger.info(
        "model load %.2f s; %.3f s per scan (mean; median %.3f s) over %d scan(s), %d torch thread(s)",
        load_s, statistics.fmean(seconds), statistics.median(seconds), len(seconds), torch.get_num_threads(),
    )
    logger.info("wrote %d label map(s) and %s in %s", len(summary.label_maps), VOLUMES_CSV, summary.out_dir)
    return 1 if summary.failures else 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hippogan infer`` on ``subparsers``; returns its parser."""
    parser = subparsers.add_parser(
        "infer",
        help="segment T1 scans (NIfTI, DICOM series, manifest): label maps and hippocampal volumes",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="+", type=Path, help="NIfTI files, folders, DICOM series folders or a manifest CSV"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    parser.add_argument(
        "--bundle", type=Path, default=DEFAULT_BUNDLE, help=f"bundle folder (default: {DEFAULT_BUNDLE})"
    )
    parser.add_argument("--weights", type=Path, help="generator weights (default: the bundle's models/model.pt)")
    parser.add_argument("--dataset-dir", type=Path, help="root of a manifest's relative paths")
    parser.add_argument("--fold", type=int, help="segment only this manifest fold")
    parser.add_argument("--mode", choices=(AUTO, *ROI_MODES), default=AUTO, help="ROI mode (default: auto)")
    parser.add_argument(
        "--no-lcc", action="store_true", help="keep every connected component (default: the largest per side)"
    )
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda:0 when available)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
    return parser
