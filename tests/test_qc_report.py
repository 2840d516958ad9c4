"""QC pictures (pipeline/qc.py) and the HTML report (pipeline/report.py): real MSD crops, synthetic whole brains."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from hippogan.pipeline.qc import PLAUSIBLE_VOLUME_MM3, _split_sides, confidence_flag, qc_figure, volume_flags
from hippogan.pipeline.report import write_report
from hippogan.pipeline.results import Segmentation, side_volumes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 150_000


def png_size(path) -> tuple[int, int]:
    """Return (width, height) in pixels of a PNG file, after checking its signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def two_sided_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole-brain-like RAS volume (1.5 x 1 x 1.2 mm voxels) with one two-part blob at x = -25 and x = +25 mm."""
    affine = np.diag([1.5, 1.0, 1.2, 1.0])
    affine[:3, 3] = (-45.0, -30.0, -24.0)
    shape = (60, 60, 40)
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 10.0, shape).astype(np.float32)
    xyz = nib.affines.apply_affine(affine, np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    label = np.zeros(shape, np.uint8)
    for cx in (-25.0, 25.0):
        blob = ((xyz[..., 0] - cx) / 5) ** 2 + (xyz[..., 1] / 15) ** 2 + (xyz[..., 2] / 6) ** 2 < 1
        label[blob] = 2
        label[blob & (xyz[..., 1] > 5)] = 1
    image[label > 0] = 60.0
    return image, label, affine


def to_lps(image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same scan stored LPS: first two array axes reversed, affine adjusted so world coordinates are unchanged."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = (image.shape[0] - 1, image.shape[1] - 1)
    return image[::-1, ::-1].copy(), label[::-1, ::-1].copy(), affine @ flip


@pytest.fixture(scope="module")
def msd_case(msd_dir):
    """(image, label, affine) of one real MSD crop."""
    img = nib.load(msd_dir / "imagesTr" / "hippocampus_001.nii.gz")
    lab = nib.load(msd_dir / "labelsTr" / "hippocampus_001.nii.gz")
    return np.asarray(img.dataobj), np.asarray(lab.dataobj).astype(np.uint8), img.affine


@pytest.mark.parametrize(
    "title, n_rows",
    [(None, 1), ("hippocampus_001", 1)],
)
def test_qc_figure_msd(msd_case, tmp_path, title, n_rows):
    out = qc_figure(*msd_case, tmp_path / "sub" / "qc.png", title=title)
    width, height = png_size(out)
    assert width == 900 and height == 330 * n_rows + (40 if title else 0)
    assert out.stat().st_size < MAX_PNG_BYTES


def test_qc_figure_two_sides_and_lps(tmp_path):
    image, label, affine = two_sided_volume()
    ras = qc_figure(image, label, affine, tmp_path / "ras.png", title="two sides")
    assert png_size(ras) == (900, 40 + 2 * 330)
    assert ras.stat().st_size < MAX_PNG_BYTES
    lps = qc_figure(*to_lps(image, label, affine), tmp_path / "lps.png", title="two sides")
    assert nib.aff2axcodes(to_lps(image, label, affine)[2]) == ("L", "P", "S")
    np.testing.assert_array_equal(imread(lps), imread(ras))


def test_qc_figure_brain_outline_row(tmp_path):
    """A registered whole brain: a first row with the whole scan and the template's brain outlined, titled."""
    image, label, affine = two_sided_volume()
    brain = np.zeros(image.shape, dtype=bool)
    brain[5:-5, 5:-5, 3:-3] = True
    out = qc_figure(image, label, affine, tmp_path / "brain.png", title="t", brain=brain,
                    brain_heading="MNI152 brain outline (registered): registration quality 0.55")
    assert png_size(out) == (900, 40 + 3 * 330)
    assert out.stat().st_size < 3 * MAX_PNG_BYTES
    lps = qc_figure(*to_lps(image, label, affine), tmp_path / "lps.png", title="t",
                    brain=to_lps(image, brain, affine)[1],
                    brain_heading="MNI152 brain outline (registered): registration quality 0.55")
    np.testing.assert_array_equal(imread(lps), imread(out))
    with pytest.raises(ValueError, match="brain must have the label's shape"):
        qc_figure(image, label, affine, tmp_path / "bad.png", brain=brain[1:])


def test_split_sides_by_world_x():
    image, label, affine = two_sided_volume()
    sides = _split_sides(label, affine, None, None)
    assert list(sides) == ["right", "left"]
    for side, sign in (("right", 1), ("left", -1)):
        x = nib.affines.apply_affine(affine, np.argwhere(sides[side]))[:, 0]
        assert np.all(np.sign(x) == sign) and abs(x.mean() - sign * 25.0) < 1.0
    assert sum(m.sum() for m in sides.values()) == (label > 0).sum()
    assert list(_split_sides(label, affine, None, False)) == ["unknown"]
    assert list(_split_sides(label, affine, {"unknown": {}}, None)) == ["unknown"]
    assert _split_sides(np.zeros_like(label), affine, None, True) == {}


@pytest.mark.parametrize("source", ["msd", "synthetic"])
def test_qc_figure_empty_label(request, tmp_path, source):
    image, label, affine = request.getfixturevalue("msd_case") if source == "msd" else two_sided_volume()
    out = qc_figure(image, np.zeros_like(label), affine, tmp_path / "empty.png", title="empty")
    assert png_size(out) == (900, 370)
    assert out.stat().st_size < MAX_PNG_BYTES


@pytest.mark.parametrize(
    "image_shape, label_shape, affine",
    [
        ((4, 4), (4, 4), np.eye(4)),
        ((4, 4, 4), (4, 4, 5), np.eye(4)),
        ((4, 4, 4), (4, 4, 4), np.eye(3)),
        ((4, 4, 4), (4, 4, 4), np.zeros((4, 4))),
    ],
)
def test_qc_figure_bad_input(tmp_path, image_shape, label_shape, affine):
    with pytest.raises(ValueError, match="qc_figure"):
        qc_figure(np.zeros(image_shape), np.zeros(label_shape), affine, tmp_path / "qc.png")


@pytest.mark.parametrize(
    "total, expected",
    [(0.0, "small"), (1499.0, "small"), (1500.0, ""), (3300.0, ""), (6000.0, ""), (6001.0, "large")],
)
def test_volume_flags(total, expected):
    low, high = PLAUSIBLE_VOLUME_MM3
    flag = volume_flags(total)
    assert flag.startswith(expected) if expected else flag == ""
    assert bool(flag) == (not low <= total <= high)


@pytest.mark.parametrize("total", [-1.0, float("nan"), float("inf")])
def test_volume_flags_bad_input(total):
    with pytest.raises(ValueError, match="total_mm3"):
        volume_flags(total)


@pytest.fixture
def report_rows(msd_case, tmp_path):
    """Rows of a small run: one MSD crop, one two-sided subject with a hostile id, one failure."""
    crop_png = qc_figure(*msd_case, tmp_path / "out" / "hippocampus_001.png", title="hippocampus_001")
    image, label, affine = two_sided_volume()
    brain_png = qc_figure(image, label, affine, tmp_path / "out" / "brain.png")
    hostile = "<script>alert(1)</script>"
    return [
        {"subject": "hippocampus_001", "side": "unknown", "total_mm3": 2948.0, "anterior_mm3": 1324.0,
         "posterior_mm3": 1624.0, "qc_png": crop_png},
        {"subject": hostile, "side": "right", "total_mm3": 1234.0, "anterior_mm3": 600.0,
         "posterior_mm3": 634.0, "qc_png": brain_png},
        {"subject": hostile, "side": "left", "total_mm3": 3456.0, "anterior_mm3": 1700.0,
         "posterior_mm3": 1756.0, "qc_png": brain_png, "registration_quality": 0.5531, "etiv_mm3": 1471632.0,
         "total_norm_mm3": 4515.0},
        {"subject": "Study1_HCropVolume", "status": "failed", "reason": "no DICOM series in folder <x> & co"},
    ]


@pytest.mark.parametrize("embed", [True, False])
def test_write_report(report_rows, tmp_path, embed):
    out = write_report(report_rows, tmp_path / "out" / "report.html", title="run <1>", embed_images=embed)
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<title>run &lt;1&gt;</title>" in page
    for subject in ("hippocampus_001", "&lt;script&gt;alert(1)&lt;/script&gt;", "Study1_HCropVolume"):
        assert subject in page
    assert "<script" not in page.lower()
    assert "Total (mm³)" in page and "Anterior (mm³)" in page and "Posterior (mm³)" in page
    for volume in ("2,948", "1,324", "1,624", "1,234", "3,456"):
        assert f">{volume}<" in page
    assert "small (&lt; 1500 mm³)" in page  # the right side, 1,234 mm³
    assert "Registration quality" in page and ">0.55<" in page and ">1,471,632<" in page and ">4,515<" in page
    assert "failed: no DICOM series in folder &lt;x&gt; &amp; co" in page
    assert page.count('rowspan="2"') == 1  # one thumbnail for both sides of one subject
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page
    assert 'href="hippocampus_001.png"' in page and 'href="brain.png"' in page
    if embed:
        assert page.count('src="data:image/png;base64,') == 2
    else:
        assert 'src="hippocampus_001.png"' in page and "data:" not in page


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"side": "left"}], "row 0 needs a non-empty 'subject'"),
        ([{"subject": "a"}, {"subject": "b", "status": "crashed"}], "row 1 .*status 'crashed'"),
        ([{"subject": "a", "volume": 3.0}], r"unknown key\(s\) \['volume'\]"),
    ],
)
def test_write_report_bad_rows(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        write_report(rows, tmp_path / "report.html")


def test_write_report_missing_picture(tmp_path, caplog):
    out = write_report([{"subject": "s1", "total_mm3": 3000.0, "qc_png": tmp_path / "gone.png"}], tmp_path / "r.html")
    assert "missing: gone.png" in out.read_text(encoding="utf-8")
    assert "gone.png" in caplog.text


@pytest.mark.parametrize(
    "confidence, threshold, expected",
    [
        (0.93, 0.939, "low confidence (0.930 < 0.939): check this scan"),
        (0.939, 0.939, ""),
        (0.96, 0.939, ""),
        (0.5, None, ""),
        (float("nan"), 0.939, ""),
    ],
)
def test_confidence_flag(confidence, threshold, expected):
    assert confidence_flag(confidence, threshold) == expected


def test_low_confidence_side_is_flagged_in_volumes_rows():
    """Only the side below the model's threshold gets "check this scan"; it joins the volume flag."""
    labels = np.zeros((1, 10, 10, 10), dtype=np.uint8)
    labels[0, 2:8, 2:8, 2:8] = 1
    sides = [side_volumes("left", torch.as_tensor(labels), 30.0, confidence=0.90),
             side_volumes("right", torch.as_tensor(labels), 1.0, confidence=0.95)]  # fmt: skip
    result = Segmentation(subject="s", source=Path("s.nii.gz"), mode="mni", label_map=labels[0],
                          affine=np.eye(4), sides=sides, low_confidence=0.939)  # fmt: skip
    left, right = result.volume_rows()
    assert left["flag"] == "large (> 6000 mm³); low confidence (0.900 < 0.939): check this scan"
    assert right["flag"] == "small (< 1500 mm³)"
    result.low_confidence = None
    assert "confidence" not in result.volume_rows()[0]["flag"]
