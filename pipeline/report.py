"""One self-contained HTML report of a segmentation run: a table of volumes, flags, status and QC pictures.

The page needs nothing but itself to display: inline CSS, no JavaScript, no external resource; QC
thumbnails are embedded as base64 ``data:`` URIs and link (relative path) to the full PNG next to
the report. Every user string (subject ids, sides, flags, error messages) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from hippogan.transforms.registration import QUALITY_WARN

from .file_io import atomic_path
from .qc import ANTERIOR_COLOR, BRAIN_COLOR, PLAUSIBLE_VOLUME_MM3, POSTERIOR_COLOR, volume_flags

__all__ = ["ROW_KEYS", "write_report"]

logger = logging.getLogger(__name__)

ROW_KEYS = (
    "subject", "side", "total_mm3", "anterior_mm3", "posterior_mm3", "flag", "status", "reason", "qc_png",
    "registration_quality", "etiv_mm3", "total_norm_mm3", "confidence",
)  # fmt: skip
"""Keys a report row may hold; only ``subject`` is required (see :func:`write_report`)."""

_STATUSES = ("ok", "failed")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
p.summary, p.note { margin: 0.3em 0; color: #444; font-size: 0.9em; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: middle; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.flag { background: #fff3cd; white-space: nowrap; }
tr.failed td { background: #fde2e2; }
td.status-failed { color: #a00000; font-weight: bold; }
td.status-ok, td.status-failed { max-width: 22em; overflow-wrap: anywhere; word-break: break-word; }
td.qc { background: #000; padding: 2px; }
td.qc img { width: 360px; display: block; }
.swatch { display: inline-block; width: 1.6em; height: 0.25em; vertical-align: middle; }
"""


def write_report(
    rows: Sequence[Mapping[str, object]],
    out_html: str | Path,
    title: str = "hippogan report",
    embed_images: bool = True,
) -> Path:
    """Write one HTML page tabulating the run, one table row per subject and side.

    Args:
        rows: one mapping per subject and side, keys from :data:`ROW_KEYS`:

            - ``subject`` (required): subject id, any string (it is escaped);
            - ``side``: ``"left"``, ``"right"`` or ``"unknown"`` (hippocampus crop); may be absent;
            - ``total_mm3``, ``anterior_mm3``, ``posterior_mm3``: volumes in mm³ (``None``/absent/NaN
              shown as "-");
            - ``flag``: QC flag text; absent: :func:`~hippogan.pipeline.qc.volume_flags` of
              ``total_mm3``;
            - ``status``: ``"ok"`` or ``"failed"``; absent: ``"failed"`` when ``reason`` is given,
              else ``"ok"``;
            - ``reason``: why the subject failed (e.g. the error message);
            - ``qc_png``: path of the subject's QC picture (absolute, or relative to the current
              folder). Consecutive rows of one subject and one picture share one thumbnail cell;
            - ``registration_quality``, ``etiv_mm3`` (mm³), ``total_norm_mm3`` (head-size-normalised
              volume, mm³): a registered whole brain's figures (``volumes.csv``); "-" when absent;
            - ``confidence``: the network's self-agreement on the side (``volumes.csv``); "-" when absent.
        out_html: HTML file to write (UTF-8); its folder is created.
        title: page title and heading.
        embed_images: embed thumbnails as ``data:`` URIs (the page stands alone); ``False`` refers
            to the PNGs by relative path instead (a smaller page that needs the PNGs beside it).

    Returns:
        ``out_html`` as a ``Path``.

    Raises:
        ValueError: if a row lacks ``subject``, has a key not in :data:`ROW_KEYS` or an unknown status.
            A ``qc_png`` that is not a file is logged and shown as missing (the run's results still get
            their report).
    """
    out_html = Path(out_html)
    checked = [_check_row(i, row) for i, row in enumerate(rows)]
    body = []
    n_subjects = len({r["subject"] for r in checked})
    n_failed = len({r["subject"] for r in checked if r["status"] == "failed"})
    n_flagged = sum(1 for r in checked if r["flag"])
    low, high = PLAUSIBLE_VOLUME_MM3
    body.append(f"<h1>{_esc(title)}</h1>")
    body.append(
        f'<p class="summary">{n_subjects} subject(s), {n_subjects - n_failed} ok, {n_failed} failed; '
        f"{n_flagged} hippocampus side(s) flagged.</p>"
    )
    body.append(
        f'<p class="note">Flag: volume of one hippocampus outside {low:,.0f}-{high:,.0f} mm³, a wide '
        "plausible adult range; low confidence (check this scan): the model agrees less with itself than on 9 in 10 "
        "scans of its cross-validation; or a doubtful input or registration. Look at the QC picture (a "
        "quality-control flag, not a diagnosis). "
        f'Outlines: <span class="swatch" style="background:{ANTERIOR_COLOR}"></span> anterior (label 1), '
        f'<span class="swatch" style="background:{POSTERIOR_COLOR}"></span> posterior (label 2). '
        f'<span class="swatch" style="background:{BRAIN_COLOR}"></span> MNI152 brain where the registration put '
        "it (whole brains). Registration quality: local correlation with the template (good: above "
        f"{QUALITY_WARN:.2f}); eTIV: estimated intracranial volume from the registration; normalised: the "
        "volume scaled to the template's head size. Click a picture to enlarge it.</p>"
    )
    body.append("<table>")
    body.append(
        "<tr><th>Subject</th><th>Side</th><th>Total (mm³)</th><th>Anterior (mm³)</th>"
        "<th>Posterior (mm³)</th><th>Normalised total (mm³)</th><th>Registration quality</th>"
        "<th>eTIV (mm³)</th><th>Confidence</th><th>Flag</th><th>Status</th><th>QC</th></tr>"
    )
    images: dict[Path, str] = {}
    for i, row in enumerate(checked):
        first_of_group = i == 0 or _group(checked[i - 1]) != _group(row)
        span = 1
        while i + span < len(checked) and _group(checked[i + span]) == _group(row):
            span += 1
        failed = row["status"] == "failed"
        status = "failed" + (f": {row['reason']}" if row["reason"] else "") if failed else "ok"
        cells = [
            f"<td>{_esc(row['subject'])}</td>",
            f"<td>{_esc(row['side'])}</td>",
            *(f'<td class="num">{_volume(row[k])}</td>' for k in ("total_mm3", "anterior_mm3", "posterior_mm3")),
            f'<td class="num">{_volume(row["total_norm_mm3"])}</td>',
            f'<td class="num">{_fixed(row["registration_quality"], 2)}</td>',
            f'<td class="num">{_volume(row["etiv_mm3"])}</td>',
            f'<td class="num">{_fixed(row["confidence"], 3)}</td>',
            f'<td{" class=flag" if row["flag"] else ""}>{_esc(row["flag"])}</td>',
            f'<td class="status-{row["status"]}">{_esc(status)}</td>',
        ]
        if first_of_group:
            cells.append(_qc_cell(row["qc_png"], out_html.parent, span, embed_images, images))
        body.append(f'<tr{" class=failed" if failed else ""}>{"".join(cells)}</tr>')
    body.append("</table>")
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    out_html.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    logger.info("wrote report %s (%d row(s), %d failed subject(s))", out_html, len(checked), n_failed)
    return out_html


def _check_row(index: int, row: Mapping[str, object]) -> dict[str, object]:
    """Return ``row`` with every key of :data:`ROW_KEYS` filled in; raise ``ValueError`` on bad input."""
    if not isinstance(row, Mapping) or not row.get("subject"):
        raise ValueError(f"write_report: row {index} needs a non-empty 'subject', got {row!r}.")
    unknown = set(row) - set(ROW_KEYS)
    if unknown:
        raise ValueError(f"write_report: row {index} ({row['subject']!r}) has unknown key(s) {sorted(unknown)}; "
                         f"expected some of {list(ROW_KEYS)}.")
    out = {key: row.get(key) for key in ROW_KEYS}
    out["subject"] = str(out["subject"])
    out["side"] = "" if out["side"] is None else str(out["side"])
    out["reason"] = "" if out["reason"] is None else str(out["reason"])
    out["status"] = str(out["status"] or ("failed" if out["reason"] else "ok"))
    if out["status"] not in _STATUSES:
        raise ValueError(f"write_report: row {index} ({out['subject']!r}) has status {out['status']!r}; "
                         f"expected one of {_STATUSES}.")
    if out["flag"] is None:
        total = out["total_mm3"]
        out["flag"] = volume_flags(total) if _is_number(total) and out["status"] == "ok" else ""
    out["flag"] = str(out["flag"])
    if out["qc_png"] is not None:
        out["qc_png"] = Path(out["qc_png"])
        if not out["qc_png"].is_file():
            logger.warning("write_report: row %d (%r): QC picture %s is not a file",
                           index, out["subject"], out["qc_png"])
    return out


def _group(row: Mapping[str, object]) -> tuple[object, object]:
    """Rows sharing a thumbnail cell: one subject, one QC picture."""
    return row["subject"], row["qc_png"]


def _qc_cell(png: Path | None, folder: Path, span: int, embed: bool, cache: dict[Path, str]) -> str:
    """Return the QC ``<td>``: a thumbnail linked to the full PNG (relative to ``folder``), or "-"."""
    rowspan = f' rowspan="{span}"' if span > 1 else ""
    if png is None:
        return f"<td{rowspan}>-</td>"
    if not png.is_file():
        return f"<td{rowspan}>missing: {_esc(png.name)}</td>"
    href = quote(Path(os.path.relpath(png.resolve(), folder.resolve())).as_posix())
    if embed:
        if png not in cache:
            cache[png] = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        src = cache[png]
    else:
        src = href
    return f'<td class="qc"{rowspan}><a href="{_esc(href)}"><img src="{_esc(src)}" alt="QC picture"></a></td>'


def _is_number(value: object) -> bool:
    """Whether ``value`` is a finite real number."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _fixed(value: object, digits: int) -> str:
    """Format a number with ``digits`` decimals; "-" when missing or not a number."""
    return f"{float(value):.{digits}f}" if _is_number(value) else "-"


def _volume(value: object) -> str:
    """Format a volume in mm³ with thousands separators; "-" when missing or not a number."""
    return f"{float(value):,.0f}" if _is_number(value) else "-"


def _esc(value: object) -> str:
    """HTML-escape ``value`` (quotes included)."""
    return html.escape(str(value), quote=True)
