"""Dataset manifests: one CSV row a subject, ``subject_id,image,label,fold``, paths relative to the dataset root.

Built from a dataset folder (:func:`build_manifest`, the ``hippogan manifest`` command), written
with :func:`write_manifest`, loaded for a MONAI ``Dataset`` with :func:`load_manifest` (paths
resolved against the dataset root given at load time) and split with :func:`split_by_fold`.

Layouts read by :func:`scan_dataset`, tried in this order:

- MSD: ``imagesTr/`` + ``labelsTr/`` (same file names; ``dataset.json`` not needed);
- plain: ``images/`` + ``labels/`` (same file names);
  without the labels folder, rows are unlabelled;
- DICOM: one sub-folder a series (the ``image`` column is the sub-folder's path), no labels.

An image without a label file (or a label without its image) still gets a row, which names the
missing file, so validation reports it with the others.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.utils import CommonKeys

from hippogan.transforms.labels import LABEL_MAP_PRESETS, parse_label_map

from .file_io import NIFTI_SUFFIXES, atomic_path
from .manifest_validation import SUBJECT_ID, ManifestError, validate_manifest

__all__ = [
    "SUBJECT_ID",
    "FOLD",
    "MANIFEST_COLUMNS",
    "scan_dataset",
    "assign_folds",
    "build_manifest",
    "write_manifest",
    "load_manifest",
    "select_folds",
    "split_by_fold",
    "add_parser",
]

logger = logging.getLogger(__name__)

FOLD = "fold"
MANIFEST_COLUMNS = (SUBJECT_ID, CommonKeys.IMAGE, CommonKeys.LABEL, FOLD)
"""The CSV header, in order."""

IMAGE_LABEL_FOLDERS = (("imagesTr", "labelsTr"), ("images", "labels"))


def _subject_id(name: str) -> str:
    """File name without its NIfTI suffix (``hippocampus_001.nii.gz`` -> ``hippocampus_001``)."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_names(folder: Path) -> list[str]:
    """Sorted NIfTI file names in ``folder``, hidden files (e.g. macOS ``._*``) skipped."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))


def _scan_image_label(root: Path, images: str, labels: str) -> list[dict[str, str]]:
    """Rows of an ``images``/``labels`` folder pair, paired by subject id; orphans name the missing file."""
    image_names = _nifti_names(root / images)
    if not (root / labels).is_dir():
        return [{SUBJECT_ID: _subject_id(n), CommonKeys.IMAGE: f"{images}/{n}", CommonKeys.LABEL: ""} for n in image_names]
    label_by_id = {_subject_id(n): n for n in _nifti_names(root / labels)}
    rows = []
    for name in image_names:
        sid = _subject_id(name)
        rows.append({SUBJECT_ID: sid, CommonKeys.IMAGE: f"{images}/{name}", CommonKeys.LABEL: f"{labels}/{label_by_id.get(sid, name)}"})
    image_ids = {_subject_id(n) for n in image_names}
    for sid, name in label_by_id.items():
        if sid not in image_ids:
            rows.append({SUBJECT_ID: sid, CommonKeys.IMAGE: f"{images}/{name}", CommonKeys.LABEL: f"{labels}/{name}"})
    return sorted(rows, key=lambda r: (r[SUBJECT_ID], r[CommonKeys.IMAGE]))


def scan_dataset(dataset_dir: str | os.PathLike) -> list[dict[str, str]]:
    """List the subjects of a dataset folder (see the module docstring for the layouts).

    Args:
        dataset_dir: the dataset root.

    Returns:
        Rows ``{subject_id, image, label}`` sorted by subject id; paths are POSIX and relative
        to ``dataset_dir``; ``label`` is ``""`` where there is none.

    Raises:
        ValueError: ``dataset_dir`` is not a folder or matches no layout.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise ValueError(f"dataset folder {root}: not found")
    for images, labels in IMAGE_LABEL_FOLDERS:
        if (root / images).is_dir():
            return _scan_image_label(root, images, labels)
    series = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not series:
        raise ValueError(f"dataset folder {root}: expected imagesTr/+labelsTr/, images/+labels/ or one sub-folder a DICOM series")
    return [{SUBJECT_ID: name, CommonKeys.IMAGE: name, CommonKeys.LABEL: ""} for name in series]


def assign_folds(subject_ids: Iterable[str], folds: int = 10, seed: int = 0) -> dict[str, int]:
    """Assign each subject a fold: deterministic for ``seed``, fold sizes differing by at most 1.

    Args:
        subject_ids: subject ids (repeats share one fold).
        folds: number of folds, >= 1.
        seed: seed of the random permutation of the sorted ids.

    Returns:
        subject id -> fold in ``[0, folds)``.
    """
    if folds < 1:
        raise ValueError(f"folds: expected an integer >= 1, got {folds}")
    ordered = sorted(set(subject_ids))
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[index]: rank % folds for rank, index in enumerate(permutation)}


def build_manifest(dataset_dir: str | os.PathLike, folds: int = 10, seed: int = 0) -> list[dict[str, str | int]]:
    """Scan ``dataset_dir`` and assign folds; rows ``{subject_id, image, label, fold}`` (not validated).

    Args:
        dataset_dir: the dataset root (see :func:`scan_dataset`).
        folds: number of folds.
        seed: fold-assignment seed.
    """
    rows = scan_dataset(dataset_dir)
    fold_of = assign_folds((row[SUBJECT_ID] for row in rows), folds=folds, seed=seed)
    if len(fold_of) < folds:
        logger.warning("%s: %d subjects for %d folds: some folds are empty", dataset_dir, len(fold_of), folds)
    return [{**row, FOLD: fold_of[row[SUBJECT_ID]]} for row in rows]


def write_manifest(rows: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Write rows as a manifest CSV (header :data:`MANIFEST_COLUMNS`, ``\\n`` line ends), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, CommonKeys.LABEL: row.get(CommonKeys.LABEL) or ""} for row in rows)


def load_manifest(
    csv_path: str | os.PathLike, dataset_dir: str | os.PathLike, allow_outside: bool = False
) -> list[dict[str, str | int]]:
    """Load a manifest CSV as a datalist for a MONAI ``Dataset``.

    Args:
        csv_path: the manifest CSV.
        dataset_dir: the dataset root that the CSV's relative paths resolve against.
        allow_outside: accept paths that leave ``dataset_dir`` (absolute paths, ``..``); refused by default, so
            that a manifest cannot point a run at files the user did not mean to hand over.

    Returns:
        One dict a row: ``subject_id``, ``image`` (path), ``label`` (path; omitted when empty),
        ``fold`` (int). Files are not checked here: see :func:`validate_manifest`.

    Raises:
        ValueError: missing columns, a non-integer fold or a path outside ``dataset_dir`` (naming the file and line).
    """
    root = Path(dataset_dir)
    resolved_root = root.resolve()

    def inside(relative: str, line: int) -> str:
        path = root / relative
        if not allow_outside and resolved_root not in (path.resolve(), *path.resolve().parents):
            raise ValueError(
                f"{csv_path} line {line}: {relative!r} leaves the dataset folder {root}; paths must be relative to "
                "it (pass --allow-outside-dataset to accept such paths)."
            )
        return str(path)

    with Path(csv_path).open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {SUBJECT_ID, CommonKeys.IMAGE, FOLD} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}; expected header {','.join(MANIFEST_COLUMNS)}")
        rows = []
        for line, record in enumerate(reader, start=2):
            try:
                fold = int(record[FOLD])
            except (TypeError, ValueError):
                raise ValueError(f"{csv_path} line {line}: fold {record[FOLD]!r} is not an integer") from None
            item: dict[str, str | int] = {
                SUBJECT_ID: record[SUBJECT_ID], CommonKeys.IMAGE: inside(record[CommonKeys.IMAGE], line)
            }  # fmt: skip
            if record.get(CommonKeys.LABEL):
                item[CommonKeys.LABEL] = inside(record[CommonKeys.LABEL], line)
            item[FOLD] = fold
            rows.append(item)
    return rows


def select_folds(rows: Sequence[Mapping], folds: Iterable[int] | None = None, exclude_folds: Iterable[int] | None = None) -> list[Mapping]:
    """Rows whose fold is in ``folds`` (all when ``None``) and not in ``exclude_folds``."""
    keep = None if folds is None else set(folds)
    drop = set(exclude_folds or ())
    return [row for row in rows if (keep is None or row[FOLD] in keep) and row[FOLD] not in drop]


def split_by_fold(rows: Sequence[Mapping], val_fold: int | Iterable[int]) -> tuple[list[Mapping], list[Mapping]]:
    """Split rows into ``(train, val)``: ``val`` holds the rows of ``val_fold`` (one fold or several).

    Raises:
        ValueError: a requested fold has no rows.
    """
    val_folds = {val_fold} if isinstance(val_fold, int) else set(val_fold)
    present = {row[FOLD] for row in rows}
    if not val_folds or not val_folds <= present:
        raise ValueError(f"val_fold {sorted(val_folds)}: expected folds present in the manifest {sorted(present)}")
    return select_folds(rows, exclude_folds=val_folds), select_folds(rows, folds=val_folds)


_DESCRIPTION = """\
Build a manifest CSV (subject_id,image,label,fold; paths relative to --dataset-dir) from a
dataset folder, validate every row (all voxel data is read) and write it. If any row is bad,
nothing is written, every bad row is printed and the exit code is 2.

dataset layouts, tried in order:
  imagesTr/ + labelsTr/   MSD (same file names; dataset.json not needed)
  images/ + labels/       plain pair (without labels/: unlabelled rows)
  SERIES/*.dcm            one sub-folder a DICOM series (image = the sub-folder), no labels
"""

_LABEL_MAP_HELP = (
    "label map applied before the label-value check (must give values in {0,1,2}): "
    + ", ".join(f"'{name}' ({spec or 'identity'})" for name, spec in LABEL_MAP_PRESETS.items())
    + ", or 'SRC:DST,...' pairs with unlisted values -> 0 ('*:V' sets that value); default: identity. "
    "Pass the same map to training (MapLabelsd)."
)


def _run(args: argparse.Namespace) -> int:
    """``hippogan manifest``: build, validate (exit 2 listing every bad row) and write the CSV."""
    try:
        label_map = parse_label_map(args.label_map)
        rows = build_manifest(args.dataset_dir, folds=args.folds, seed=args.seed)
        validate_manifest(rows, label_map, dataset_dir=args.dataset_dir, num_workers=args.workers, progress=True)
    except ManifestError as exc:
        logger.error("%s: manifest not written, %s", args.dataset_dir, exc)
        return 2
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    write_manifest(rows, args.out)
    logger.info("wrote %s: %d subjects in %d folds", args.out, len(rows), args.folds)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``hippogan manifest`` on the CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "manifest",
        help="build and validate a dataset manifest CSV (subject_id,image,label,fold)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset-dir", required=True, type=Path, help="dataset root; CSV paths are relative to it")
    parser.add_argument("--out", required=True, type=Path, help="manifest CSV to write")
    parser.add_argument("--folds", type=int, default=10, help="number of cross-validation folds (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="fold-assignment seed (default: 0)")
    parser.add_argument("--label-map", default=None, metavar="NAME_OR_SPEC", help=_LABEL_MAP_HELP)
    parser.add_argument("--workers", type=int, default=None, help="reader threads for validation (default: min(4, CPUs))")
    parser.set_defaults(func=_run)
