"""Quality-control picture of one segmentation, and a plausibility flag for hippocampal volumes.

:func:`qc_figure` draws, per hippocampus, the three orthogonal planes through its centroid
(sagittal, coronal, axial), zoomed to the hippocampus, with the anterior (label 1) and posterior
(label 2) parts outlined. Display conventions, on arrays reoriented to RAS first:

- sagittal: anterior on the viewer's left, superior up;
- coronal and axial: radiological, the patient's right on the viewer's left; superior (coronal) or
  anterior (axial) up.

Every panel carries its orientation letters (R/L/A/P/S/I), so the picture reads right whatever the
convention a reader is used to.

:func:`volume_flags` flags a per-side volume outside a wide plausible adult range
(:data:`PLAUSIBLE_VOLUME_MM3`). Healthy adult hippocampi measure about 2,500-4,500 mm³ per side
(UK Biobank nomograms, ages 45-80: Nobis et al., "Hippocampal volume across age: nomograms derived
from over 19,700 people in UK Biobank", NeuroImage: Clinical 23, 101904, 2019); the 200 MSD Task04
reference labels shared with this project (head + body + tail) span 2,382-4,401 mm³. The range
1,500-6,000 mm³ leaves room for atrophy in dementia and for protocol differences, so a flag points at
a likely segmentation or input failure worth a look. It is a QC flag, not a diagnosis.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from nibabel.affines import apply_affine, voxel_sizes
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

__all__ = [
    "ANTERIOR_COLOR",
    "BRAIN_COLOR",
    "PLAUSIBLE_VOLUME_MM3",
    "POSTERIOR_COLOR",
    "confidence_flag",
    "qc_figure",
    "volume_flags",
]

logger = logging.getLogger(__name__)

PLAUSIBLE_VOLUME_MM3 = (1500.0, 6000.0)
"""Per-side hippocampal volume (mm³, head + body + tail) outside which :func:`volume_flags` flags a case."""

ANTERIOR_COLOR = "#ffb000"
"""Outline colour of label 1, the anterior hippocampus (head)."""

POSTERIOR_COLOR = "#00d0ff"
"""Outline colour of label 2, the posterior hippocampus (body + tail)."""

BRAIN_COLOR = "#40ff40"
"""Outline colour of the MNI152 template's brain where the registration put it."""

_LABEL_OUTLINES = {1: (ANTERIOR_COLOR, "anterior (1)"), 2: (POSTERIOR_COLOR, "posterior (2)")}
_BRAIN_OUTLINES = {1: (BRAIN_COLOR, "MNI152 brain, registered")}

_MARGIN_MM = 8.0
_UPSAMPLE = 4  # sub-voxel grid for the outlines, so they follow voxel edges
_DPI = 100
_ROW_INCHES = (9.0, 3.3)
_TITLE_INCHES = 0.4

# Per plane: the two displayed array axes (horizontal, vertical), whether the horizontal one is
# flipped, and the orientation letters at the (left, right, top, bottom) edges.
_PLANES = (
    ("sagittal", 0, (1, 2), True, ("A", "P", "S", "I")),
    ("coronal", 1, (0, 2), True, ("R", "L", "S", "I")),
    ("axial", 2, (0, 1), True, ("R", "L", "A", "P")),
)


def volume_flags(total_mm3: float) -> str:
    """Return a QC flag for one hippocampus's volume: ``""`` when plausible, else why not.

    Args:
        total_mm3: volume of one hippocampus (label > 0 on one side), in mm³.

    Returns:
        ``""`` inside :data:`PLAUSIBLE_VOLUME_MM3`, else ``"small (< 1500 mm³)"`` or
        ``"large (> 6000 mm³)"``. A flag asks for a look at the QC picture; it is not a diagnosis.

    Raises:
        ValueError: if ``total_mm3`` is negative or not finite.
    """
    total = float(total_mm3)
    if not np.isfinite(total) or total < 0:
        raise ValueError(f"volume_flags: total_mm3 must be a finite volume >= 0 mm³, got {total_mm3!r}.")
    low, high = PLAUSIBLE_VOLUME_MM3
    if total < low:
        return f"small (< {low:.0f} mm³)"
    if total > high:
        return f"large (> {high:.0f} mm³)"
    return ""


def confidence_flag(confidence: float, low_confidence: float | None) -> str:
    """Return the "check this scan" flag of one side: ``""`` unless its confidence is below ``low_confidence``.

    Args:
        confidence: the side's :func:`~hippogan.pipeline.results.self_agreement` (``volumes.csv``'s
            ``confidence``); NaN (no hippocampus found) is not flagged here (:func:`volume_flags` is).
        low_confidence: the model's threshold (the bundle's ``low_confidence``: the 10th percentile of its
            recipe's confidence on the cross-validation's held-out scans), or None for no flag.

    Returns:
        ``""`` or ``"low confidence (0.912 < 0.939): check this scan"``.
    """
    if low_confidence is None or not np.isfinite(confidence) or confidence >= low_confidence:
        return ""
    return f"low confidence ({confidence:.3f} < {low_confidence:.3f}): check this scan"


def qc_figure(
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    out_png: str | Path,
    title: str | None = None,
    volumes: Mapping[str, Mapping[str, float]] | None = None,
    whole_brain: bool | None = None,
    brain: np.ndarray | None = None,
    brain_heading: str = "MNI152 brain outline",
    low_confidence: float | None = None,
) -> Path:
    """Write a PNG of the three orthogonal planes through each hippocampus, segmentation outlined.

    One row per hippocampus: in whole-brain mode the label's voxels are split by the sign of their
    world x coordinate (x < 0: ``"left"``, x >= 0: ``"right"``); otherwise (a hippocampus crop) they
    form one side, ``"unknown"``. Each row is zoomed to the side's bounding box plus 8 mm, drawn
    with the voxel spacing's true aspect, and titled with the side's volumes. An empty label gives the
    central planes of the whole volume marked "no hippocampus found".

    Args:
        image: T1 intensities, shape (X, Y, Z), any numeric dtype and scale (the grey window is the
            1st-99.5th percentile of the non-zero voxels shown).
        label: label map on the image grid, shape (X, Y, Z): 0 background, 1 anterior, 2 posterior.
        affine: (4, 4) voxel-to-world (mm) matrix of both arrays; any orientation (the arrays are
            reoriented to the closest RAS first).
        out_png: PNG file to write; its folder is created.
        title: heading of the picture (e.g. the subject id); none when ``None``.
        volumes: per side (``"left"``, ``"right"`` or ``"unknown"``), the volumes in mm³ under
            ``"total_mm3"``, ``"anterior_mm3"``, ``"posterior_mm3"`` (e.g. the segmenter's); what is not
            given is measured on ``label`` (voxel count times voxel volume); optionally ``"confidence"``
            (printed in the row's heading).
        whole_brain: split left/right; ``None`` decides from ``volumes`` (keys ``"left"``/``"right"``)
            or, without it, from whether the label has voxels on both sides of x = 0.
        brain: bool ``(X, Y, Z)`` on the image grid, the template's brain as the registration placed it
            (:func:`~hippogan.transforms.registration.brain_mask_on_grid`): adds a first row, the whole scan
            through the brain's centre with the brain outlined, titled ``brain_heading`` (e.g. the
            registration quality), so a misregistration shows at a glance.
        low_confidence: a side whose ``volumes`` confidence is below this gets the "check this scan" flag in its
            heading (:func:`confidence_flag`); None: no confidence flag.

    Returns:
        ``out_png`` as a ``Path``. The picture is 900 pixels wide, 330 pixels high per row plus 40 for
        the title (100 dpi), typically 40-100 kB per row.

    Raises:
        ValueError: if the arrays are not 3D of one shape or ``affine`` is not an invertible, finite 4x4 matrix.
    """
    original = np.asarray(affine, dtype=float)
    if brain is not None and np.shape(brain) != np.shape(label):
        raise ValueError(f"qc_figure: brain must have the label's shape {np.shape(label)}, got {np.shape(brain)}.")
    image, label, affine = _to_ras(image, label, affine)
    spacing = voxel_sizes(affine)
    brain = None if brain is None else apply_orientation(np.asarray(brain, dtype=bool), io_orientation(original))
    sides = _split_sides(label, affine, volumes, whole_brain)
    n_rows = max(len(sides), 1) + (brain is not None)
    heights = [_TITLE_INCHES] * bool(title) + [_ROW_INCHES[1]] * n_rows
    fig = Figure(figsize=(_ROW_INCHES[0], sum(heights)), dpi=_DPI, facecolor="black")
    rows = list(np.atleast_1d(fig.subfigures(len(heights), 1, height_ratios=heights)))
    if title:
        rows.pop(0).text(0.5, 0.5, title, ha="center", va="center", color="white", fontsize=13, fontweight="bold")
    if brain is not None:
        full = tuple(slice(0, n) for n in image.shape)
        inside = np.argwhere(brain)
        centre = tuple(int(c) for c in np.rint(inside.mean(axis=0))) if len(inside) else tuple(n // 2 for n in image.shape)
        _draw_row(rows.pop(0), image, brain.astype(np.uint8), spacing, affine, full, centre, brain_heading,
                  outlines=_BRAIN_OUTLINES)
    if not sides:
        full = tuple(slice(0, n) for n in image.shape)
        centre = tuple(n // 2 for n in image.shape)
        _draw_row(rows[0], image, label, spacing, affine, full, centre, "no hippocampus found", outlines=None)
    voxel_mm3 = float(np.prod(spacing))
    for row, (side, mask) in zip(rows, sides.items()):
        side_label = np.where(mask, label, 0)
        measured = {
            "total_mm3": float(mask.sum()) * voxel_mm3,
            "anterior_mm3": float((side_label == 1).sum()) * voxel_mm3,
            "posterior_mm3": float((side_label == 2).sum()) * voxel_mm3,
        }
        vol = {**measured, **{key: float(v) for key, v in (volumes or {}).get(side, {}).items()}}
        low = confidence_flag(vol.get("confidence", np.nan), low_confidence)  # the heading prints the confidence
        flag = "; ".join(f for f in (volume_flags(vol["total_mm3"]), low and f"check this scan (< {low_confidence:.3f})")
                         if f)  # fmt: skip
        heading = (
            f"{'hippocampus (side unknown)' if side == 'unknown' else side + ' hippocampus'}: "
            f"total {vol['total_mm3']:,.0f} mm³ (anterior {vol['anterior_mm3']:,.0f}, "
            f"posterior {vol['posterior_mm3']:,.0f})"
            + (f", confidence {vol['confidence']:.3f}" if np.isfinite(vol.get("confidence", np.nan)) else "")
            + (f"  FLAG: {flag}" if flag else "")
        )
        idx = np.argwhere(mask)
        centre = tuple(int(c) for c in np.rint(idx.mean(axis=0)))
        pad = np.ceil(_MARGIN_MM / spacing).astype(int)
        lo = np.maximum(idx.min(axis=0) - pad, 0)
        hi = np.minimum(idx.max(axis=0) + pad + 1, image.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        _draw_row(row, image, side_label, spacing, affine, box, centre, heading, outlines=_LABEL_OUTLINES)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=_DPI, facecolor="black")
    logger.debug("wrote QC picture %s (%d side(s))", out_png, len(sides))
    return out_png


def _to_ras(image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the inputs; return image, label and affine reoriented to the closest RAS axes."""
    image, label, affine = np.asarray(image), np.asarray(label), np.asarray(affine, dtype=float)
    if image.ndim != 3 or label.shape != image.shape:
        raise ValueError(
            f"qc_figure: image and label must be 3D arrays of one shape (X, Y, Z), got {image.shape} and {label.shape}."
        )
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or np.linalg.det(affine[:3, :3]) == 0:
        raise ValueError(f"qc_figure: affine must be an invertible, finite 4x4 matrix, got shape {affine.shape}.")
    ornt = io_orientation(affine)
    new_affine = affine @ inv_ornt_aff(ornt, image.shape)
    return apply_orientation(image, ornt), apply_orientation(label, ornt), new_affine


def _split_sides(
    label: np.ndarray,
    affine: np.ndarray,
    volumes: Mapping[str, Mapping[str, float]] | None,
    whole_brain: bool | None,
) -> dict[str, np.ndarray]:
    """Return ``{side: boolean mask}`` of the non-empty hippocampi, in display order (right, left, unknown)."""
    idx = np.argwhere(label > 0)
    if not len(idx):
        return {}
    x_world = apply_affine(affine, idx)[:, 0]
    if whole_brain is None:
        whole_brain = bool({"left", "right"} & set(volumes)) if volumes else bool(x_world.min() < 0 <= x_world.max())
    if not whole_brain:
        return {"unknown": label > 0}
    sides = {}
    for side, keep in (("right", x_world >= 0), ("left", x_world < 0)):
        if keep.any():
            mask = np.zeros(label.shape, bool)
            mask[tuple(idx[keep].T)] = True
            sides[side] = mask
    return sides


def _draw_row(
    row: SubFigure,
    image: np.ndarray,
    label: np.ndarray,
    spacing: np.ndarray,
    affine: np.ndarray,
    box: tuple[slice, slice, slice],
    centre: tuple[int, int, int],
    heading: str,
    outlines: Mapping[int, tuple[str, str]] | None,
) -> None:
    """Draw the sagittal, coronal and axial planes through ``centre`` (voxel indices), cropped to ``box``.

    ``outlines``: label value -> (colour, legend text) of the regions outlined; ``None``: a warning row (red
    heading, nothing outlined).
    """
    row.set_facecolor("black")
    if outlines is not None:
        row.suptitle(heading, color="white", fontsize=10, y=0.98)
    else:
        row.suptitle(heading, color="#ff4040", fontsize=14, fontweight="bold", y=0.99)
    shown = image[box].astype(float)
    values = shown[np.isfinite(shown)]
    values = values[values != 0] if np.any(values != 0) else values
    vmin, vmax = np.percentile(values, [1.0, 99.5]) if values.size else (0.0, 1.0)
    world = apply_affine(affine, centre)
    # Width ratios = panel aspect ratios, so the three panels share one height and fill the row.
    sizes = [(box[h].stop - box[h].start) * spacing[h] / ((box[v].stop - box[v].start) * spacing[v])
             for _, _, (h, v), _, _ in _PLANES]
    axes = row.subplots(1, 3, gridspec_kw={"width_ratios": sizes, "left": 0.01, "right": 0.99,
                                           "top": 0.84, "bottom": 0.09, "wspace": 0.04})
    for ax, (name, fixed, (h, v), flip, letters) in zip(axes, _PLANES):
        sl = list(box)
        sl[fixed] = centre[fixed]
        plane = image[tuple(sl)].astype(float)  # axes (h, v): h < v in every plane
        h0, v0 = box[h].start, box[v].start
        extent = (
            (h0 - 0.5) * spacing[h], (box[h].stop - 0.5) * spacing[h],
            (v0 - 0.5) * spacing[v], (box[v].stop - 0.5) * spacing[v],
        )
        ax.imshow(plane.T, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", extent=extent,
                  interpolation="auto", aspect="equal")
        for value, (color, _) in (outlines or {}).items():
            _outline(ax, label[tuple(sl)] == value, (h0, v0), (spacing[h], spacing[v]), color)
        if flip:
            ax.invert_xaxis()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name}  {'xyz'[fixed]} = {world[fixed]:.1f} mm", color="white", fontsize=9)
        for (x, y, ha, va), letter in zip(
            ((0.03, 0.5, "left", "center"), (0.97, 0.5, "right", "center"),
             (0.5, 0.97, "center", "top"), (0.5, 0.03, "center", "bottom")),
            letters,
        ):
            ax.text(x, y, letter, transform=ax.transAxes, ha=ha, va=va, color="white", fontsize=10,
                    fontweight="bold", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "edgecolor": "none"})
    if outlines is not None:
        row.legend(
            handles=[_line(color, text) for color, text in outlines.values()],
            loc="lower center", ncol=2, fontsize=8, frameon=False, labelcolor="white",
            bbox_to_anchor=(0.5, 0.0),
        )


def _outline(ax: Axes, mask: np.ndarray, origin: tuple[int, int], spacing: tuple[float, float], color: str) -> None:
    """Outline a 2D (h, v) mask along its voxel edges; ``origin`` is the box's first voxel index (h, v)."""
    if not mask.any():
        return
    up = np.repeat(np.repeat(mask, _UPSAMPLE, axis=0), _UPSAMPLE, axis=1).astype(float)
    coords = [
        (origin[a] - 0.5 + (np.arange(up.shape[a]) + 0.5) / _UPSAMPLE) * spacing[a]
        for a in (0, 1)
    ]
    ax.contour(coords[0], coords[1], up.T, levels=[0.5], colors=color, linewidths=1.2)


def _line(color: str, text: str) -> Line2D:
    """A legend handle: a short line of ``color`` labelled ``text``."""
    return Line2D([], [], color=color, linewidth=2, label=text)
