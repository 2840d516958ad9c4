"""What to segment: turn the user's paths (NIfTI or MGH files, DICOM series folders, folders, manifests) into scans.

:func:`find_inputs` lists ``(subject_id, path)`` pairs without reading any image; :func:`input_datalist` turns
them into the ``[{"subject_id": ..., "image": ...}]`` datalist the bundle's ``dataset`` reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hippogan.transforms.keys import IMAGE
from hippogan.transforms.loading import is_dicom_file, scan_stem

from .file_io import safe_file_stem
from .manifest import SUBJECT_ID, load_manifest, select_folds

__all__ = ["OUTPUT_NAMES", "check_outputs_spare_inputs", "find_inputs", "input_datalist", "output_stems"]

OUTPUT_NAMES = ("volumes.csv", "report.html", "qc")
"""Fixed names a run writes in its output folder, besides ``<stem>.nii.gz`` and ``qc/<stem>.png``."""


def _holds_dicom(folder: Path) -> bool:
    return any(p.is_file() and not p.name.startswith(".") and is_dicom_file(p) for p in folder.iterdir())


def _folder_inputs(folder: Path) -> list[tuple[str, Path]]:
    """One DICOM series folder, or the NIfTI/MGH files and DICOM series sub-folders of a folder."""
    if _holds_dicom(folder):
        return [(folder.name, folder)]
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        stem = scan_stem(entry.name)
        if entry.is_file() and stem is not None:
            found.append((stem, entry))
        elif entry.is_dir() and _holds_dicom(entry):
            found.append((entry.name, entry))
    if not found:
        raise ValueError(
            f"input folder {folder}: no scan file (*.nii.gz, *.nii, *.mgz, *.mgh), DICOM series or series sub-folder in it."
        )
    return found


def find_inputs(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    dataset_dir: str | os.PathLike | None = None,
    fold: int | None = None,
    allow_outside: bool = False,
) -> list[tuple[str, Path]]:
    """List the scans to segment as ``(subject_id, path)`` pairs; nothing is read but folder listings.

    Each path may be:

    - a NIfTI or FreeSurfer MGH file (``subject_id`` = its name without ``.nii.gz``/``.nii``/``.mgz``/``.mgh``);
    - a manifest CSV (``subject_id,image,label,fold``; image paths relative to ``dataset_dir``);
    - a folder holding DICOM files: one series (``subject_id`` = the folder name);
    - a folder of NIfTI/MGH files and/or DICOM series sub-folders: each one.

    Args:
        paths: one path or several.
        dataset_dir: root of a manifest's relative paths (needed with a manifest).
        fold: keep only this fold of a manifest (``None``: every row).
        allow_outside: accept manifest paths that leave ``dataset_dir`` (see :func:`~hippogan.pipeline.manifest.load_manifest`).

    Raises:
        ValueError: a path does not exist or is of no listed kind, a manifest lacks ``dataset_dir`` or has
            no row of ``fold``, a folder holds no scan, or two scans share a subject id (their outputs
            would collide); the message names the paths.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError("find_inputs: no input path given.")
    found: list[tuple[str, Path]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found += _folder_inputs(path)
        elif not path.is_file():
            raise ValueError(f"input {path}: no such file or folder.")
        elif path.suffix.lower() == ".csv":
            found += _manifest_inputs(path, dataset_dir, fold, allow_outside)
        elif scan_stem(path.name) is not None:
            found.append((scan_stem(path.name), path))
        elif is_dicom_file(path):
            found.append((path.parent.name, path.parent))
        else:
            raise ValueError(
                f"input {path}: expected a NIfTI or MGH file, a manifest CSV, or a folder (such files, DICOM series)."
            )
    seen: dict[str, Path] = {}
    clashes = []
    for subject, path in found:
        if subject in seen and seen[subject] != path:
            clashes.append(f"{subject} ({seen[subject]} and {path})")
        seen.setdefault(subject, path)
    if clashes:
        raise ValueError(f"inputs share subject ids, so their outputs would collide: {'; '.join(clashes)}.")
    return list(dict.fromkeys(found))


def _manifest_inputs(
    path: Path, dataset_dir: str | os.PathLike | None, fold: int | None, allow_outside: bool
) -> list[tuple[str, Path]]:
    if dataset_dir is None:
        raise ValueError(f"manifest {path}: needs dataset_dir, the root of its relative image paths.")
    rows = load_manifest(path, dataset_dir, allow_outside=allow_outside)
    if not rows:
        raise ValueError(f"manifest {path}: no rows below its header.")
    if fold is not None:
        rows = select_folds(rows, folds=[int(fold)])
        if not rows:
            raise ValueError(f"manifest {path}: no row with fold {fold}.")
    return [(str(row[SUBJECT_ID]), Path(row[IMAGE])) for row in rows]


def input_datalist(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    dataset_dir: str | os.PathLike | None = None,
    fold: int | None = None,
    allow_outside: bool = False,
) -> list[dict[str, str]]:
    """:func:`find_inputs` as a MONAI datalist: ``[{"subject_id": id, "image": path}, ...]`` (same arguments)."""
    pairs = find_inputs(paths, dataset_dir, fold, allow_outside)
    return [{SUBJECT_ID: subject, IMAGE: str(path)} for subject, path in pairs]


def output_stems(datalist: Sequence[dict]) -> dict[str, str]:
    """Subject id -> file name stem of its outputs (:func:`~hippogan.pipeline.file_io.safe_file_stem`).

    Raises:
        ValueError: two subject ids map to one stem (their outputs would overwrite each other).
    """
    stems: dict[str, str] = {}
    owners: dict[str, str] = {}
    clashes = []
    for item in datalist:
        subject = str(item[SUBJECT_ID])
        stem = safe_file_stem(subject)
        if stem in owners and owners[stem] != subject:
            clashes.append(f"{owners[stem]!r} and {subject!r} -> {stem}")
        owners.setdefault(stem, subject)
        stems[subject] = stem
    if clashes:
        raise ValueError(f"subject ids that map to one output file name (rename them): {'; '.join(clashes)}.")
    return stems


def check_outputs_spare_inputs(datalist: Sequence[dict], out_dir: str | os.PathLike, stems: Sequence[str]) -> None:
    """Refuse a run whose outputs could overwrite an input.

    Refused: ``out_dir`` is the folder an input file lies in, or is (inside) an input DICOM series folder;
    or an output path (``<stem>.nii.gz``, ``qc/<stem>.png``, :data:`OUTPUT_NAMES`) is an input file.

    Raises:
        ValueError: naming the output folder and the input.
    """
    out = Path(out_dir).resolve()
    outputs = {out / name for name in OUTPUT_NAMES}
    outputs |= {out / f"{stem}.nii.gz" for stem in stems} | {out / "qc" / f"{stem}.png" for stem in stems}
    for item in datalist:
        source = Path(item[IMAGE]).resolve()
        folder = source if source.is_dir() else source.parent
        if out == folder or (source.is_dir() and source in out.parents) or source in outputs:
            raise ValueError(
                f"--out {out_dir} holds the input {item[IMAGE]}: the outputs could overwrite it; "
                "write them to another folder."
            )
