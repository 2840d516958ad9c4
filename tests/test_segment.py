"""``hippogan segment`` end to end on real scans: MSD crops (folder and manifest), DICOM series, a corrupt file
among them, and nilearn's MNI152 whole brain (``--demo``).

The network is a narrow bundle copy with random weights (:func:`helpers.narrow_bundle`): plumbing, not
accuracy. The report is rendered in headless Chromium when ``/usr/bin/chromium`` exists (else that test skips;
``tools/screenshot_report.sh`` is the documented manual check).
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import narrow_bundle, save_random_weights
from matplotlib.image import imread

from hippogan.pipeline.cli import main as cli_main
from hippogan.pipeline.qc import volume_flags
from hippogan.pipeline.results import VOLUME_COLUMNS, VOLUMES_CSV
from hippogan.pipeline.segment_cli import DEMO_SUBJECT, QC_DIR, REPORT_HTML
from hippogan.transforms import IMAGE, scan_loader

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[1] / "tools" / "screenshot_report.sh"
VOLUME_KEYS = ("total_mm3", "anterior_mm3", "posterior_mm3")


def segment(*args: str | Path, bundle: Path | None = None) -> int:
    """Run ``hippogan segment ARGS --device cpu --no-progress`` (with ``--bundle`` when given); the exit code."""
    extra = ["--bundle", str(bundle)] if bundle is not None else []
    return cli_main(["segment", *map(str, args), *extra, "--device", "cpu", "--no-progress"])


def read_volumes(out: Path) -> list[dict[str, str]]:
    """Rows of ``out/volumes.csv``, after checking its header."""
    with (out / VOLUMES_CSV).open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames) == VOLUME_COLUMNS
        return list(reader)


def check_row(row: dict[str, str], labels: np.ndarray, affine: np.ndarray) -> None:
    """Volumes (mm³) = voxel counts of ``labels`` x voxel volume of ``affine``; the flag follows the total (and may
    add the model's low-confidence flag)."""
    voxel_mm3 = abs(np.linalg.det(affine[:3, :3]))
    expected = ((labels > 0).sum(), (labels == 1).sum(), (labels == 2).sum())
    for key, count in zip(VOLUME_KEYS, expected):
        assert float(row[key]) == pytest.approx(count * voxel_mm3), key
    flags = row["flag"].split("; ") if row["flag"] else []
    volume_flag = [f for f in (volume_flags(float(row["total_mm3"])),) if f]
    assert flags[: len(volume_flag)] == volume_flag
    assert all(f.startswith("low confidence") for f in flags[len(volume_flag) :]), flags
    assert (row["status"], row["reason"]) == ("ok", "")


def check_png(path: Path, n_rows: int) -> None:
    """A QC picture: 900 px wide, a 40 px title and 330 px per row (:func:`qc_figure`), at most 100 kB a row."""
    height, width = imread(path).shape[:2]
    assert (width, height) == (900, 40 + 330 * n_rows)
    assert path.stat().st_size < 100_000 * n_rows


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return narrow_bundle(tmp_path_factory.mktemp("bundles") / "hippocampus_resse_gan")


@pytest.fixture(scope="module")
def mixed_run(bundle, msd_dir, dicom_dir, tmp_path_factory) -> tuple[int, Path, dict[str, Path]]:
    """One run over a NIfTI folder (2 MSD crops + a truncated file), a manifest (1 crop) and 3 DICOM series.

    Returns the exit code, the output folder and the good inputs (subject id -> path).
    """
    root = tmp_path_factory.mktemp("mixed")
    images = sorted((msd_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[:3]
    folder = root / "nifti"
    folder.mkdir()
    for image in images[:2]:
        (folder / image.name).symlink_to(image)
    (folder / "corrupt.nii.gz").write_bytes(images[0].read_bytes()[:3000])
    manifest = root / "manifest.csv"
    manifest.write_text(f"subject_id,image,label,fold\nfrom_manifest,imagesTr/{images[2].name},,0\n")
    code = segment(folder, manifest, dicom_dir, "--dataset-dir", msd_dir, "--out", root / "out", bundle=bundle)
    good = {image.name[: -len(".nii.gz")]: image for image in images[:2]}
    good["from_manifest"] = images[2]
    good.update({series.name: series for series in sorted(dicom_dir.iterdir()) if series.is_dir()})
    return code, root / "out", good


def test_corrupt_scan_fails_alone(mixed_run):
    code, out, good = mixed_run
    assert code == 1
    assert len(good) == 6
    for subject in good:
        assert (out / f"{subject}.nii.gz").is_file() and (out / QC_DIR / f"{subject}.png").is_file(), subject
    assert not (out / "corrupt.nii.gz").exists() and not (out / QC_DIR / "corrupt.png").exists()
    failed = [row for row in read_volumes(out) if row["status"] != "ok"]
    assert [(r["subject"], r["status"], r["flag"], r["total_mm3"]) for r in failed] == [("corrupt", "failed", "", "")]
    assert "corrupt.nii.gz" in failed[0]["reason"]


def test_label_maps_align_with_inputs(mixed_run):
    _, out, good = mixed_run
    rows = {row["subject"]: row for row in read_volumes(out)}
    for subject, source in good.items():
        scan = scan_loader(IMAGE)({IMAGE: str(source)})[IMAGE]  # NIfTI or DICOM series, RAS affine
        pred = nib.load(out / f"{subject}.nii.gz")
        assert pred.shape == tuple(scan.shape), subject
        assert np.array_equal(pred.affine, scan.affine.numpy()), subject
        if source.is_file():
            assert np.array_equal(pred.affine, nib.load(source).affine), subject
        labels = np.asarray(pred.dataobj)
        assert pred.get_data_dtype() == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
        assert (rows[subject]["side"], rows[subject]["mode"]) == ("unknown", "precropped")
        check_row(rows[subject], labels, pred.affine)
        check_png(out / QC_DIR / f"{subject}.png", n_rows=1)


def test_report_lists_every_scan(mixed_run):
    _, out, good = mixed_run
    page = (out / REPORT_HTML).read_text(encoding="utf-8")
    assert all(f"<td>{subject}</td>" in page for subject in [*good, "corrupt"])
    assert page.count('src="data:image/png;base64,') == len(good)
    assert all(f'href="{QC_DIR}/{subject}.png"' in page for subject in good)
    assert "failed: cannot load or pre-process" in page and "corrupt.nii.gz" in page
    assert "http://" not in page and "https://" not in page


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no {CHROMIUM}: check with {SCREENSHOT.name} by hand")
def test_report_renders_in_headless_chromium(mixed_run, tmp_path):
    _, out, _ = mixed_run
    shot = tmp_path / "report.png"
    done = subprocess.run(
        ["bash", str(SCREENSHOT), str(out / REPORT_HTML), str(shot), "1400x1000"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1000, 1400)
    dark = (pixels.max(axis=2) < 0.1).mean()  # the QC thumbnails' black background; text alone is far less
    assert dark > 0.05, f"only {dark:.1%} dark pixels: are the embedded QC thumbnails shown?"


def test_demo_segments_the_mni152_whole_brain(tmp_path, bundle):
    weights = save_random_weights(tmp_path / "other.pt", bundle=bundle, seed=1)
    out = tmp_path / "demo"
    assert segment("--demo", "--out", out, "--model", weights, bundle=bundle) == 0
    scan, pred = nib.load(out / "input" / f"{DEMO_SUBJECT}.nii.gz"), nib.load(out / f"{DEMO_SUBJECT}.nii.gz")
    assert scan.shape == (197, 233, 189) and pred.shape == scan.shape
    assert np.array_equal(pred.affine, scan.affine)
    labels = np.asarray(pred.dataobj)
    rows = read_volumes(out)
    assert [(r["subject"], r["side"], r["mode"]) for r in rows] == [
        (DEMO_SUBJECT, "left", "registered"), (DEMO_SUBJECT, "right", "registered"),
    ]  # fmt: skip
    found = np.argwhere(labels > 0)
    x_world = nib.affines.apply_affine(pred.affine, found)[:, 0]  # mm, RAS: left hippocampus at x < 0
    for row, side in zip(rows, (found[x_world < 0], found[x_world >= 0])):
        check_row(row, labels[tuple(side.T)], pred.affine)
    # nilearn's template (sym_09a) is left-right symmetric about x = 0 and so are the two ROI boxes; registered to
    # itself (mode auto) the boxes land within a fraction of a voxel: the two sides get nearly one volume
    assert float(rows[0]["total_mm3"]) == pytest.approx(float(rows[1]["total_mm3"]), rel=0.05)
    n_sides = sum(float(r["total_mm3"]) > 0 for r in rows)
    check_png(out / QC_DIR / f"{DEMO_SUBJECT}.png", n_rows=max(n_sides, 1) + 1)  # + the registration row
    assert (out / REPORT_HTML).is_file()


def test_shipped_bundle_is_the_default(msd_dir, tmp_path):
    """Without ``--bundle``/``--model`` the shipped bundle and its ``models/model.pt`` segment the hippocampus."""
    image = msd_dir / "imagesTr" / "hippocampus_001.nii.gz"
    assert segment(image, "--out", tmp_path) == 0
    reference = np.asarray(nib.load(msd_dir / "labelsTr" / image.name).dataobj) > 0
    predicted = np.asarray(nib.load(tmp_path / image.name).dataobj) > 0
    assert 2 * (reference & predicted).sum() / (reference.sum() + predicted.sum()) > 0.8  # binary Dice


def test_shipped_ensemble_segments_a_right_hippocampus_crop(msd_dir, tmp_path):
    """A crop mirrored along x (a right hippocampus's, to the networks) gets the mirrored label map: the shipped
    coronal generator only knows the MSD crops' (left) orientation, and the ensemble picks it per scan."""
    image = nib.load(msd_dir / "imagesTr" / "hippocampus_001.nii.gz")
    mirrored = tmp_path / "right.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::-1].copy(), image.affine, image.header), mirrored)
    assert segment(msd_dir / "imagesTr" / "hippocampus_001.nii.gz", mirrored, "--out", tmp_path / "out", "--no-qc") == 0
    left = np.asarray(nib.load(tmp_path / "out" / "hippocampus_001.nii.gz").dataobj)
    right = np.asarray(nib.load(tmp_path / "out" / "right.nii.gz").dataobj)[::-1]
    assert (left == right).mean() > 0.995  # labels 0, 1, 2 voxel by voxel
    assert 2 * ((left > 0) & (right > 0)).sum() / ((left > 0).sum() + (right > 0).sum()) > 0.97


def test_no_qc_and_infer_alias_write_label_maps_and_table_only(bundle, msd_dir, tmp_path):
    image = msd_dir / "imagesTr" / "hippocampus_001.nii.gz"
    for command in ("segment", "infer"):
        out = tmp_path / command
        args = [command, str(image), "--out", str(out), "--bundle", str(bundle), "--no-qc", "--device", "cpu"]
        assert cli_main([*args, "--no-progress", "--mode", "precropped", "--no-lcc", "--threads", "1"]) == 0
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted([image.name, VOLUMES_CSV])
        assert [r["mode"] for r in read_volumes(out)] == ["precropped"]


@pytest.mark.parametrize(
    "args, match",
    [
        ([], "give INPUT paths or --demo"),
        (["--demo", "x.nii.gz"], "give INPUT paths or --demo"),
        (["missing.nii.gz"], "no such file or folder"),
        (["{image}", "--model", "{garbage}"], "cannot read weights"),
        (["{image}", "--device", "cuda"], "no CUDA device"),
    ],
)
def test_bad_arguments_exit_2(bundle, msd_dir, tmp_path, caplog, args, match):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 64)
    image = msd_dir / "imagesTr" / "hippocampus_001.nii.gz"
    args = [a.format(image=image, garbage=garbage) for a in args]
    assert cli_main(["segment", *args, "--out", str(tmp_path / "out"), "--bundle", str(bundle)]) == 2
    assert match in caplog.text


def test_two_models_segment_as_one_ensemble(bundle, msd_dir, tmp_path):
    """``--model a --model b``: one model of the mean probability; its label map and confidence differ from a's."""
    image = msd_dir / "imagesTr" / "hippocampus_001.nii.gz"
    a = save_random_weights(tmp_path / "a.pt", bundle=bundle, seed=1)
    b = save_random_weights(tmp_path / "b.pt", bundle=bundle, seed=2)
    common = ("--no-qc", "--mode", "precropped")
    assert segment(image, "--out", tmp_path / "a", "--model", a, *common, bundle=bundle) == 0
    assert segment(image, "--out", tmp_path / "ab", "--model", a, "--model", b, *common, bundle=bundle) == 0
    single, ensemble = read_volumes(tmp_path / "a")[0], read_volumes(tmp_path / "ab")[0]
    assert ensemble["status"] == "ok" and ensemble["confidence"] != single["confidence"]


def test_single_model_runs_the_first_member_alone(bundle, msd_dir, tmp_path):
    """``--single-model`` = ``--model <bundle>/models/model.pt``: the shipped ensemble's first member."""
    image = msd_dir / "imagesTr" / "hippocampus_001.nii.gz"
    common = ("--no-qc", "--mode", "precropped")
    assert segment(image, "--out", tmp_path / "one", "--single-model", *common, bundle=bundle) == 0
    first = bundle / "models" / "model.pt"
    assert segment(image, "--out", tmp_path / "first", "--model", first, *common, bundle=bundle) == 0
    assert segment(image, "--out", tmp_path / "both", *common, bundle=bundle) == 0
    one, by_path, both = (read_volumes(tmp_path / name)[0] for name in ("one", "first", "both"))
    assert one["confidence"] == by_path["confidence"] and one["total_mm3"] == by_path["total_mm3"]
    assert both["confidence"] != one["confidence"]
