"""Bad inputs and faults: nothing is lost, nothing lands outside ``--out``, a broken input is never ``ok``.

Each case copies a real shared scan into a temporary folder and breaks it the way users' files break
(docs/robustness.md lists the guarantees these tests hold).
"""

from __future__ import annotations

import csv
import multiprocessing
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import narrow_bundle, save_random_weights

from hippogan.pipeline.cli import main as cli_main
from hippogan.pipeline.file_io import safe_file_stem
from hippogan.pipeline.results import VOLUMES_CSV, read_volumes_csv, write_volumes_csv


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return narrow_bundle(tmp_path_factory.mktemp("bundles") / "hippocampus_resse_gan")


@pytest.fixture(scope="module")
def scan(msd_dir) -> Path:
    return msd_dir / "imagesTr" / "hippocampus_001.nii.gz"


def segment(bundle: Path | None, *args: object) -> int:
    extra = ["--bundle", str(bundle)] if bundle is not None else []
    return cli_main(["segment", *map(str, args), *extra, "--device", "cpu", "--no-progress", "--no-qc"])


def rows_of(out: Path) -> dict[str, dict]:
    return {row["subject"]: row for row in read_volumes_csv(out / VOLUMES_CSV)}


def save_like(source: Path, path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """``data`` as NIfTI with ``source``'s affine, or with ``affine`` as the sform only (a broken one can't be a qform)."""
    if affine is None:
        nib.save(nib.Nifti1Image(data, nib.load(source).affine), path)
        return path
    image = nib.Nifti1Image(data, None)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(None, code=0)
    nib.save(image, path)
    return path


# ---------------------------------------------------------------------------------------- inputs never touched


def test_out_equal_to_the_input_folder_is_refused(bundle, scan, tmp_path, caplog):
    folder = tmp_path / "scans"
    folder.mkdir()
    copy = shutil.copy(scan, folder / scan.name)
    before = Path(copy).read_bytes()
    assert segment(bundle, folder, "--out", folder) == 2
    assert "holds the input" in caplog.text and Path(copy).read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == [scan.name]


def test_dicom_series_folder_as_out_is_refused(bundle, dicom_dir, tmp_path, caplog):
    series = shutil.copytree(sorted(p for p in dicom_dir.iterdir() if p.is_dir())[0], tmp_path / "series")
    assert segment(bundle, series, "--out", series / "out") == 2
    assert "holds the input" in caplog.text and not (series / "out").exists()


def test_subject_ids_become_safe_file_names(bundle, msd_dir, tmp_path):
    manifest = tmp_path / "m.csv"
    image = "imagesTr/hippocampus_001.nii.gz"
    ids = ["../victim/escaped", "/abs/path/x", "=1+2"]
    manifest.write_text("subject_id,image,label,fold\n" + "".join(f"{i},{image},,0\n" for i in ids))
    out = tmp_path / "out"
    assert segment(bundle, manifest, "--dataset-dir", msd_dir, "--out", out) == 0
    assert not (tmp_path / "victim").exists()
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{safe_file_stem(i)}.nii.gz" for i in ids)
    assert set(rows_of(out)) == set(ids)  # the table keeps the ids themselves
    cells = [row["subject"] for row in csv.DictReader((out / VOLUMES_CSV).open())]
    assert "'=1+2" in cells and "=1+2" not in cells  # a spreadsheet shows it as text, never runs it


def test_subject_ids_that_collide_are_refused(bundle, msd_dir, tmp_path, caplog):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject_id,image,label,fold\na/b,imagesTr/hippocampus_001.nii.gz,,0\n"
                        "a_b,imagesTr/hippocampus_003.nii.gz,,0\n")  # fmt: skip
    assert segment(bundle, manifest, "--dataset-dir", msd_dir, "--out", tmp_path / "out") == 2
    assert "one output file name" in caplog.text


def test_manifest_paths_leaving_the_dataset_are_refused_unless_allowed(bundle, msd_dir, scan, tmp_path, caplog):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"subject_id,image,label,fold\ns,{scan},,0\n")  # an absolute path
    assert segment(bundle, manifest, "--dataset-dir", tmp_path, "--out", tmp_path / "a") == 2
    assert "leaves the dataset folder" in caplog.text
    assert segment(bundle, manifest, "--dataset-dir", tmp_path, "--out", tmp_path / "b", "--allow-outside-dataset") == 0


def test_header_only_manifest_is_an_error(bundle, msd_dir, tmp_path, caplog):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject_id,image,label,fold\n")
    assert segment(bundle, manifest, "--dataset-dir", msd_dir, "--out", tmp_path / "out") == 2
    assert "no rows" in caplog.text


# ---------------------------------------------------------------------------------------- earlier results survive


def test_second_run_merges_the_table_and_resume_skips_done_scans(bundle, msd_dir, tmp_path, caplog):
    images = sorted((msd_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[:3]
    out = tmp_path / "out"
    assert segment(bundle, images[0], images[1], "--out", out) == 0
    assert segment(bundle, images[2], "--out", out) == 0
    assert set(rows_of(out)) == {"hippocampus_001", "hippocampus_003", "hippocampus_004"}
    (out / images[1].name).write_bytes((out / images[1].name).read_bytes()[:100])  # a half-written label map
    caplog.clear()
    with caplog.at_level("INFO"):
        assert segment(bundle, *images, "--out", out, "--resume") == 0
    assert "2 of 3 scan(s) already done" in caplog.text and "segmented 1 of 1" in caplog.text
    assert nib.load(out / images[1].name).shape == nib.load(images[1]).shape
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*.tmp*"))


def test_shards_write_one_table(bundle, msd_dir, tmp_path):
    images = sorted((msd_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[:3]
    out = tmp_path / "out"
    for k in (1, 2):
        assert segment(bundle, *images, "--out", out, "--shard", f"{k}/2") == 0
    assert len(rows_of(out)) == 3
    assert segment(bundle, *images, "--out", out, "--shard", "3/2") == 2


def _write_rows(path: str, start: int) -> None:
    for i in range(start, start + 20):
        write_volumes_csv([{"subject": f"s{i:03d}", "side": "unknown", "status": "ok"}], path)


def test_concurrent_writers_keep_every_row(tmp_path):
    path = str(tmp_path / VOLUMES_CSV)
    workers = [multiprocessing.get_context("fork").Process(target=_write_rows, args=(path, s)) for s in (0, 20, 40)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert sorted(row["subject"] for row in read_volumes_csv(path)) == [f"s{i:03d}" for i in range(60)]


# ---------------------------------------------------------------------------------------- broken inputs are not "ok"


def _broken_scans(scan: Path, folder: Path) -> dict[str, str]:
    """Broken copies of ``scan`` in ``folder``: name -> the reason expected in its ``failed`` row."""
    folder.mkdir()
    data = np.asarray(nib.load(scan).dataobj, dtype=np.float32)
    affine = nib.load(scan).affine
    cases = {
        "nan": (np.where(data > data.mean(), np.nan, data), None, "NaN or infinite"),
        "inf": (np.where(data > data.mean(), np.inf, data), None, "NaN or infinite"),
        "huge": (data * 1e30, None, "not a plausible MR image"),
        "zeros": (np.zeros_like(data), None, "empty or constant"),
        "constant": (np.full_like(data, 7.0), None, "empty or constant"),
        "4d": (np.stack([data, data], axis=-1), None, "holding 2 volumes"),
        "5d": (data[..., None, None].repeat(2, axis=-1), None, "spatial dimensions"),
        "singular": (data, np.vstack([affine[:1], affine[:1], affine[2:]]), "singular"),
        "zero_affine": (data, np.zeros((4, 4)), "singular"),
    }
    for name, (values, new_affine, _) in cases.items():
        save_like(scan, folder / f"{name}.nii.gz", values, new_affine)
    return {name: reason for name, (_, _, reason) in cases.items()}


def test_broken_scans_fail_with_a_reason(bundle, scan, tmp_path):
    expected = _broken_scans(scan, tmp_path / "in")
    assert segment(bundle, tmp_path / "in", "--out", tmp_path / "out") == 1
    rows = rows_of(tmp_path / "out")
    for name, reason in expected.items():
        assert rows[name]["status"] == "failed" and reason in rows[name]["reason"], (name, rows[name])


def test_singleton_4th_axis_is_segmented_with_qc(bundle, scan, tmp_path):
    data = np.asarray(nib.load(scan).dataobj)[..., None]
    (tmp_path / "in").mkdir()
    save_like(scan, tmp_path / "in" / "x.nii.gz", data)
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "in"), "--out", str(out), "--bundle", str(bundle), "--device", "cpu"]
    assert cli_main([*args, "--no-progress"]) == 0
    assert rows_of(out)["x"]["status"] == "ok" and (out / "qc" / "x.png").is_file()


def test_qform_sform_disagreement_is_flagged(bundle, scan, tmp_path):
    image = nib.load(scan)
    qform = image.affine.copy()
    qform[:3, 3] += 20.0
    odd = nib.Nifti1Image(np.asarray(image.dataobj), image.affine)
    odd.set_qform(qform, code=1)
    odd.set_sform(image.affine, code=1)
    (tmp_path / "in").mkdir()
    nib.save(odd, tmp_path / "in" / "odd.nii.gz")
    assert segment(bundle, tmp_path / "in", "--out", tmp_path / "out") == 0
    assert "qform and sform disagree" in rows_of(tmp_path / "out")["odd"]["flag"]


def test_offset_and_scaled_copies_give_the_same_volume(scan, tmp_path):
    """The shipped model: a copy shifted to negative values or scaled gives the volume of the scan (within 2 %)."""
    data = np.asarray(nib.load(scan).dataobj, dtype=np.float32)
    (tmp_path / "in").mkdir()
    shutil.copy(scan, tmp_path / "in" / "original.nii.gz")
    save_like(scan, tmp_path / "in" / "offset.nii.gz", data - 5000.0)
    save_like(scan, tmp_path / "in" / "scaled.nii.gz", data * 37.5)
    assert segment(None, tmp_path / "in", "--out", tmp_path / "out") == 0
    rows = rows_of(tmp_path / "out")
    reference = rows["original"]["total_mm3"]
    assert reference > 1000
    for name in ("offset", "scaled"):
        assert abs(rows[name]["total_mm3"] - reference) <= 0.02 * reference, (name, rows[name], reference)


def _copy_series(source: Path, target: Path, prefix: str = "") -> list[Path]:
    target.mkdir(exist_ok=True)
    return [Path(shutil.copy(f, target / f"{prefix}{f.name}")) for f in sorted(source.glob("*.dcm"))]


def test_broken_dicom_series_fail_with_a_reason(bundle, dicom_dir, tmp_path):
    series = sorted(p for p in dicom_dir.iterdir() if p.is_dir())
    inputs = tmp_path / "in"
    inputs.mkdir()
    files = sorted(_copy_series(series[0], inputs / "missing_slice"), key=lambda p: int(p.stem))
    files[len(files) // 2].unlink()
    files = sorted(_copy_series(series[0], inputs / "corrupt_slice"), key=lambda p: int(p.stem))
    corrupt = files[len(files) // 2]
    corrupt.write_bytes(corrupt.read_bytes()[:400])  # a header cut short: DICM magic, nothing after
    _copy_series(series[0], inputs / "two_series", "a")
    _copy_series(series[1], inputs / "two_series", "b")
    assert segment(bundle, inputs, "--out", tmp_path / "out") == 1
    rows = rows_of(tmp_path / "out")
    assert "not evenly spaced" in rows["missing_slice"]["reason"]
    assert "not readable slices" in rows["corrupt_slice"]["reason"]
    assert "2 DICOM series" in rows["two_series"]["reason"]
    assert all(row["status"] == "failed" for row in rows.values())


# ---------------------------------------------------------------------------------------- weights


def test_bad_weights_exit_2_with_one_line(bundle, scan, tmp_path, caplog):
    text = tmp_path / "weights.txt"
    text.write_text("not weights")
    assert segment(bundle, scan, "--out", tmp_path / "a", "--model", text) == 2
    message = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1]
    assert "cannot read weights" in message and "\n" not in message
    nan = save_random_weights(tmp_path / "nan.pt", bundle=bundle)
    state = torch.load(nan, weights_only=True)
    next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(state, nan)
    assert segment(bundle, scan, "--out", tmp_path / "b", "--model", nan) == 2
    assert "NaN or infinite" in caplog.text


# ---------------------------------------------------------------------------------------- evaluate is strict


def test_evaluate_is_strict(msd_dir, tmp_path, caplog):
    names = ["hippocampus_001", "hippocampus_003"]
    preds = tmp_path / "preds"
    preds.mkdir()
    for name in names:
        shutil.copy(msd_dir / "labelsTr" / f"{name}.nii.gz", preds / f"{name}.nii.gz")
    label = nib.load(preds / f"{names[1]}.nii.gz")
    bad = np.asarray(label.dataobj).copy()
    bad[bad == 2] = 5
    nib.save(nib.Nifti1Image(bad, label.affine), preds / f"{names[1]}.nii.gz")
    rows = "".join(f"{n},imagesTr/{n}.nii.gz,labelsTr/{n}.nii.gz,0\n" for n in names)
    manifest = tmp_path / "m.csv"
    common = ["evaluate", "--pred-dir", str(preds), "--manifest", str(manifest), "--dataset-dir", str(msd_dir)]
    manifest.write_text("subject_id,image,label,fold\n" + rows)
    assert cli_main([*common, "--out", str(tmp_path / "e1")]) == 1  # the bad case fails alone, and is listed
    assert "values [5]" in caplog.text and (tmp_path / "e1" / "metrics_per_case.csv").is_file()
    manifest.write_text("subject_id,image,label,fold\n" + rows + rows.splitlines(keepends=True)[0])
    assert cli_main([*common, "--out", str(tmp_path / "e2")]) == 2 and "more than once" in caplog.text
    manifest.write_text("subject_id,image,label,fold\n")
    assert cli_main([*common, "--out", str(tmp_path / "e3")]) == 2 and "no rows" in caplog.text


# ---------------------------------------------------------------------------------------- training faults


def test_checkpoint_write_failure_ends_in_one_line(msd_dir, tmp_path, caplog):
    from helpers import TINY, write_manifest

    manifest = write_manifest(tmp_path / "m.csv", n_train=2, n_val=1)
    run = tmp_path / "run"
    (run / "checkpoints" / "last.pt").mkdir(parents=True)  # last.pt cannot be replaced: the write fails
    (run / "checkpoints" / ".last.pt.abc.tmp").write_bytes(b"")  # left by a killed run
    overrides = [f"{key}={value}" for key, value in {**TINY, "val_interval": 5}.items()]
    code = cli_main(["train", "--dataset-dir", str(msd_dir), "--output-dir", str(run), "--manifest", str(manifest),
                     *overrides])  # fmt: skip
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.name.startswith("hippogan")]
    assert code == 2 and len(errors) == 1, errors
    assert f"cannot write checkpoint {run / 'checkpoints' / 'last.pt'}" in errors[0]
    assert "last good checkpoint: none this run" in errors[0] and "Traceback" not in caplog.text
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_mgz_is_read_like_nifti_and_fails_alone_when_broken(bundle, scan, tmp_path):
    image = nib.load(scan)
    (tmp_path / "in").mkdir()
    nib.save(nib.MGHImage(np.asarray(image.dataobj, dtype=np.float32), image.affine), tmp_path / "in" / "fs.mgz")
    (tmp_path / "in" / "broken.mgz").write_bytes(b"not an mgz")
    assert segment(bundle, tmp_path / "in", "--out", tmp_path / "out") == 1
    rows = rows_of(tmp_path / "out")
    assert rows["fs"]["status"] == "ok" and rows["broken"]["status"] == "failed"
    written = nib.load(tmp_path / "out" / "fs.nii.gz")
    assert written.shape == image.shape and np.allclose(written.affine, image.affine, atol=1e-4)
