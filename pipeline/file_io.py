"""File helpers shared by every command: NIfTI names, output folders, atomic writes, readable errors."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hippogan.transforms.loading import NIFTI_SUFFIXES, nifti_stem

__all__ = [
    "NIFTI_SUFFIXES",
    "atomic_path",
    "file_lock",
    "first_cause",
    "nifti_stem",
    "root_cause",
    "safe_file_stem",
    "spreadsheet_safe",
    "spreadsheet_unsafe",
    "writable_folder",
    "write_results",
]

_UMASK = os.umask(0o022)  # the only way to read the process's umask is to set it: put it back at once
os.umask(_UMASK)
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_file_stem(subject: str) -> str:
    """The file name stem of a subject id: what it writes can only land in the output folder itself.

    Every character other than ASCII letters, digits, ``.``, ``_`` and ``-`` becomes ``_``, and leading dots
    and dashes are dropped (no hidden files, no option-like names); ``"../victim/x"`` -> ``"_victim_x"``,
    ``"/abs/path"`` -> ``"_abs_path"``, ``"sub-01"`` -> ``"sub-01"``. An id with nothing left becomes ``"_"``.
    """
    return _UNSAFE_CHARACTERS.sub("_", str(subject)).lstrip(".-") or "_"


def spreadsheet_safe(value: object) -> object:
    """``value``, or for a text that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@`` first) the
    same text behind a ``'`` (OWASP's CSV-injection advice); numbers and other text are returned unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def spreadsheet_unsafe(value: str) -> str:
    """The inverse of :func:`spreadsheet_safe` for a cell read back from a CSV it wrote."""
    return value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA_STARTS) else value


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block; other processes wait.

    POSIX ``flock``; where it does not exist (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def writable_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and check that a file can be written there.

    Raises:
        ValueError: the folder cannot be created or written (the message names it and ``what`` it is).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{what} {folder} cannot be created or written: {error.strerror or error}") from error
    return folder


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, on failure removed.

    A reader never sees a half-written ``path``, and an earlier ``path`` survives a failed write. The
    temporary name (``.<name>.<random>.tmp<suffixes>``) keeps ``path``'s suffixes (``.nii.gz``, ``.png``), so
    writers that look at them still work.
    """
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600: give the file the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(out: str | os.PathLike, text: str, table) -> None:
    """Write a benchmark's Markdown ``text`` to ``out`` and its ``table`` (a pandas ``DataFrame``) as a CSV beside
    it (``out`` with the suffix ``.csv``), each atomically, after checking that ``out``'s folder is writable."""
    out = Path(out)
    writable_folder(out.parent, "results folder")
    with atomic_path(out) as partial:
        partial.write_text(text)
    with atomic_path(out.with_suffix(".csv")) as partial:
        table.to_csv(partial, index=False)


def first_cause(
    error: BaseException, types: type[BaseException] | tuple[type[BaseException], ...] = ValueError
) -> BaseException | None:
    """The outermost exception of ``types`` in ``error``'s cause chain, ``error`` included; ``None`` if there is none.

    MONAI's config parser wraps the error of a ``$`` expression in ``RuntimeError``s: this finds the user's error
    (e.g. the ``ValueError`` that names a bad weights file) behind them.
    """
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, types):
        cause = cause.__cause__
    return cause


def root_cause(error: BaseException) -> BaseException:
    """The innermost cause of ``error`` (MONAI wraps transform errors in ``RuntimeError('applying transform ...')``)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error
