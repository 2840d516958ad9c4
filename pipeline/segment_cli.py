"""``hippogan segment`` (alias ``hippogan infer``): segment T1 scans end to end, QC pictures and one report per run.

The segmenter is the bundle's (:func:`~hippogan.pipeline.segmenter.segmenter_from_bundle` on
``configs/inference.yaml``: the same network, weights and steps as ``monai.bundle run``); the options below
only override that config's keys (``--model`` its ``ckpt_path`` and ``ckpt_views``, ``--device`` its ``device``,
``--mode``, ``--no-lcc``).

Outputs in ``--out``:

- ``<subject_id>.nii.gz``: uint8 label map (0 background, 1 anterior, 2 posterior hippocampus) on the
  input's grid and affine (:meth:`~hippogan.pipeline.segmenter.Segmenter.run`);
- ``volumes.csv``: :data:`~hippogan.pipeline.results.VOLUME_COLUMNS`, one row per scan and side (volumes in
  mm³; ``flag`` from :func:`~hippogan.pipeline.qc.volume_flags`, empty when plausible), one ``failed`` row per
  failed scan;
- unless ``--no-qc``: ``qc/<subject_id>.png`` (:func:`~hippogan.pipeline.qc.qc_figure`, the three orthogonal
  planes through each hippocampus with the segmentation outlined and its volumes printed) and ``report.html``
  (:func:`~hippogan.pipeline.report.write_report`, the table with QC thumbnails embedded; one file, offline).

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

from hippogan.transforms import IMAGE, scan_loader
from hippogan.transforms.registration import QUALITY_WARN, brain_mask_on_grid

from .bundled import DEFAULT_BUNDLE
from .file_io import atomic_path, safe_file_stem
from .inputs import input_datalist
from .qc import qc_figure
from .report import ROW_KEYS, write_report
from .results import VOLUMES_CSV, Segmentation
from .segmenter import segmenter_from_bundle

__all__ = ["DEMO_SUBJECT", "DEVICES", "QC_DIR", "REPORT_HTML", "add_parser", "write_demo_input"]

logger = logging.getLogger(__name__)

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
hippocampus, outlined, volumes printed; for a whole brain, a first row with the MNI152 brain outlined
where the registration put it), volumes.csv (subject, side, mode, total_mm3, anterior_mm3,
posterior_mm3, flag, status, reason, registration_quality, etiv_mm3, total_norm_mm3, anterior_norm_mm3,
posterior_norm_mm3, confidence; mm³) and report.html (the table with QC thumbnails; one file, readable offline);
with --no-qc, the label maps and volumes.csv only. `hippogan infer` is this command.

inputs: NIfTI (.nii, .nii.gz) or FreeSurfer (.mgz, .mgh) files, folders of them, DICOM series folders
(a folder of .dcm files is one series; a folder of series sub-folders holds several) or a manifest CSV
(with --dataset-dir).

--mode auto (default): a whole brain (field of view over 100 mm along an axis; any orientation, head
position, voxel size, skull on or off) is registered affinely to the MNI152 template to find both
hippocampi; volumes stay in the scan's own mm³, and eTIV (from the registration's determinant) and
head-size-normalised volumes are added. A smaller scan is a hippocampus crop (e.g. MSD).
--mode mni: whole brains already registered to MNI space (fixed boxes; their alignment is measured and
a scan that is not aligned is flagged). --mode precropped: hippocampus crops only.

flag: a hippocampus volume outside 1,500-6,000 mm³ (a wide plausible adult range), a confidence below the
model's low_confidence (check this scan), a registration quality below 0.45, or a doubtful input: look at
its QC picture (a quality-control flag, not a diagnosis).

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
        with atomic_path(path) as tmp:
            nib.save(load_mni152_template(resolution=1), tmp)
    except OSError as error:
        raise ValueError(f"cannot write the demo scan {path}: {error}") from error
    return path


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """Config ids of ``inference.yaml`` to override (``auto`` keeps the config's device: CUDA when available)."""
    overrides: dict[str, object] = {"mode": args.mode, "lcc": not args.no_lcc}
    if args.single_model:
        overrides["ensemble"] = False
    if args.model:
        overrides["ckpt_path"] = str(args.model[0]) if len(args.model) == 1 else [str(m) for m in args.model]
        overrides["ckpt_views"] = ["sagittal"] * len(args.model)
        overrides["member_network_defs"] = None  # network_def for each (the shipped ensemble's 3D one is not theirs)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu or auto.")
    if args.device != "auto":
        overrides["device"] = f"$torch.device({'cuda:0' if args.device == 'cuda' else 'cpu'!r})"
    return overrides


def _qc_writer(qc_dir: Path, pictures: dict[str, Path]) -> Callable[[Segmentation, Path], None]:
    """An ``on_result`` hook: draw each scan's QC picture into ``qc_dir`` and record it in ``pictures``."""

    def write_qc(result: Segmentation, label_map: Path) -> None:
        # the label map's grid; an (X, Y, Z, 1) scan loads with its singleton axis
        image = np.asarray(scan_loader(IMAGE)({IMAGE: str(result.source)})[IMAGE]).reshape(result.label_map.shape)
        volumes = {s.side: {k: getattr(s, k) for k in ("total_mm3", "anterior_mm3", "posterior_mm3", "confidence")}
                   for s in result.sides}
        brain, heading = None, ""
        if result.mni_from_subject is not None:
            brain = brain_mask_on_grid(result.affine, result.label_map.shape, result.mni_from_subject)
            heading = f"MNI152 brain outline ({result.mode}): registration quality {result.registration_quality:.2f}"
            if result.registration_quality < QUALITY_WARN:
                heading += f"  FLAG: below {QUALITY_WARN:.2f}"
        qc_dir.mkdir(parents=True, exist_ok=True)
        path = qc_dir / f"{label_map.name[: -len('.nii.gz')]}.png"  # the label map's safe stem
        with atomic_path(path) as tmp:
            qc_figure(
                image, result.label_map, result.affine, tmp, title=result.subject, volumes=volumes,
                whole_brain=result.whole_brain, brain=brain, brain_heading=heading,
                low_confidence=result.low_confidence,
            )  # fmt: skip
        pictures[result.subject] = path

    return write_qc


def shard(datalist: list[dict], spec: str | None) -> list[dict]:
    """The ``K/N`` share of ``datalist`` (items ``K-1``, ``K-1+N``, ...; ``K`` from 1), or all of it for ``None``.

    Raises:
        ValueError: ``spec`` is not ``K/N`` with ``1 <= K <= N``.
    """
    if spec is None:
        return datalist
    k, sep, n = str(spec).partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise ValueError(f"--shard {spec}: expected K/N with 1 <= K <= N, e.g. 2/8.")
    return datalist[int(k) - 1 :: int(n)]


def _write_report(table: list[dict], out_dir: Path) -> Path:
    """``report.html`` of every row of ``volumes.csv`` (earlier runs' too), with the QC pictures found in ``qc/``."""
    rows = []
    for row in table:
        picture = out_dir / QC_DIR / f"{safe_file_stem(row['subject'])}.png"
        rows.append({**{k: row[k] for k in ROW_KEYS if k in row}, "qc_png": picture if picture.is_file() else None})
    return write_report(rows, out_dir / REPORT_HTML, title=f"hippogan segment: {out_dir.name}")


def _run(args: argparse.Namespace) -> int:
    """Run ``hippogan segment``; returns the exit code."""
    start = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    try:
        if args.demo == bool(args.inputs):
            raise ValueError("give INPUT paths or --demo (not both).")
        paths = [write_demo_input(out_dir)] if args.demo else args.inputs
        datalist = input_datalist(
            paths, dataset_dir=args.dataset_dir, fold=args.fold, allow_outside=args.allow_outside_dataset
        )
        if not datalist:
            raise ValueError(f"no scan to segment in {', '.join(map(str, paths))} (an empty manifest?).")
        datalist = shard(datalist, args.shard)
        segmenter = segmenter_from_bundle(args.bundle, overrides=_overrides(args))
        load_s = time.perf_counter() - start
        pictures: dict[str, Path] = {}
        on_result = None if args.no_qc else _qc_writer(out_dir / QC_DIR, pictures)
        summary = segmenter.run(
            datalist, out_dir, progress=not args.no_progress, on_result=on_result, num_workers=args.workers,
            resume=args.resume,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    outputs = [VOLUMES_CSV]
    if not args.no_qc:
        outputs.append(_write_report(summary.table, out_dir).name)
    flagged = sorted({str(row["subject"]) for row in summary.rows if row.get("flag")})
    if flagged:
        logger.warning("flagged (look at the QC picture): %s", ", ".join(flagged))
    logger.info(
        "segment: %d ok, %d failed, %.1f s (model load %.1f s) on %s; outputs in %s (%s)",
        len(summary.label_maps), len(summary.failures), time.perf_counter() - start, load_s,
        segmenter.device, out_dir, ", ".join(outputs),
    )  # fmt: skip
    return 1 if summary.failures else 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hippogan segment`` (and its alias ``hippogan infer``) on ``subparsers``; returns its parser."""
    parser = subparsers.add_parser(
        "segment",
        aliases=["infer"],
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
    parser.add_argument(
        "--model", type=Path, action="append", metavar="WEIGHTS",
        help="generator weights trained on sagittal planes (default: the bundle's ensemble); repeated (--model a.pt "
        "--model b.pt): one model of their mean probability (an ensemble: slower; its confidence includes the "
        "members' disagreement). Other views: set ckpt_paths and ckpt_views in the bundle's inference.yaml",
    )  # fmt: skip
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="where the network runs (default: auto, CUDA when available)"
    )
    parser.add_argument(
        "--mode", choices=("auto", "mni", "precropped"), default="auto",
        help="auto: register whole brains to MNI152, crops as they are (default); mni: whole brains already in "
        "MNI space; precropped: hippocampus crops",
    )  # fmt: skip
    parser.add_argument(
        "--single-model", action="store_true",
        help="run the first of the bundle's ensemble members alone: about 2.5 times as fast end to end, 0.008 "
        "lower Dice in the CV",
    )
    parser.add_argument(
        "--no-lcc", action="store_true", help="keep every connected component (default: the largest per side)"
    )
    parser.add_argument("--no-qc", action="store_true", help="label maps and volumes.csv only: no QC pictures, no report")
    parser.add_argument("--dataset-dir", type=Path, help="root of a manifest's relative paths")
    parser.add_argument("--fold", type=int, help="segment only this fold of a manifest")
    parser.add_argument(
        "--bundle", type=Path, default=DEFAULT_BUNDLE, help=f"bundle folder (default: {DEFAULT_BUNDLE})"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workers", type=int, default=0, help="processes loading the next scans (default: 0)")
    parser.add_argument(
        "--resume", action="store_true",
        help="skip scans already done in --out (an ok row in volumes.csv and a label map that reads whole)",
    )  # fmt: skip
    parser.add_argument(
        "--shard", metavar="K/N", help="segment only every N-th scan from the K-th (K = 1..N): split a study "
        "over N processes or array jobs writing into one --out (volumes.csv merges their rows)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-outside-dataset", action="store_true",
        help="accept manifest image paths that leave --dataset-dir (absolute paths, '..')",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
    return parser
