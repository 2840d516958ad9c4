"""Inference API on real scans (MSD crops, DICOM series, the MNI152 whole brain) with a narrow random generator.

The network comes from the bundle's ``network_def`` with narrow widths (plumbing, not accuracy) and random
weights saved as an fp16 state dict, read through the bundle's own config (:func:`segmenter_from_bundle`).
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import CPU, NARROW, save_random_weights
from monai.bundle import ConfigParser
from scipy import ndimage

from hippogan.pipeline.bundled import DEFAULT_BUNDLE
from hippogan.pipeline.inputs import find_inputs
from hippogan.pipeline.results import VOLUME_COLUMNS, VOLUMES_CSV, self_agreement
from hippogan.networks import EmptyPlaneSkipper, ProbabilityEnsemble
from hippogan.pipeline.segmenter import Segmenter, segmenter_from_bundle
from hippogan.pipeline.weights import load_generator
from hippogan.transforms import IMAGE, HippocampalROICrop, KeepLargestComponent, get_loading, get_preprocessing
from hippogan.transforms import field_of_view_mm, scan_loader
from hippogan.transforms.roi import DEFAULT_BOX_SIZE, DEFAULT_LEFT_CENTER, DEFAULT_RIGHT_CENTER, world_box_to_voxels


@pytest.fixture(scope="module")
def narrow_weights(tmp_path_factory) -> Path:
    return save_random_weights(tmp_path_factory.mktemp("weights") / "model.pt", NARROW)


@pytest.fixture(scope="module")
def segmenter(narrow_weights) -> Segmenter:
    return segmenter_from_bundle(overrides={**NARROW, **CPU, "ckpt_path": str(narrow_weights)})


@pytest.fixture(scope="module")
def msd_images(msd_dir) -> list[Path]:
    return sorted((msd_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[:2]


@pytest.fixture(scope="module")
def mni_path(tmp_path_factory) -> Path:
    from nilearn.datasets import load_mni152_template

    path = tmp_path_factory.mktemp("mni") / "mni152.nii.gz"
    nib.save(load_mni152_template(resolution=1), path)
    return path


def _datalist(pairs) -> list[dict[str, str]]:
    return [{"subject_id": subject, IMAGE: str(path)} for subject, path in pairs]


def _read_volumes(folder: Path) -> list[dict[str, str]]:
    with (folder / VOLUMES_CSV).open(newline="") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames) == VOLUME_COLUMNS
        return list(reader)


def _check_volumes(row: dict[str, str], labels: np.ndarray, affine: np.ndarray) -> None:
    """The row's volumes (mm³) are the voxel counts of ``labels`` times the voxel volume of ``affine``."""
    voxel = abs(np.linalg.det(affine[:3, :3]))
    assert float(row["anterior_mm3"]) == pytest.approx((labels == 1).sum() * voxel)
    assert float(row["posterior_mm3"]) == pytest.approx((labels == 2).sum() * voxel)
    assert float(row["total_mm3"]) == pytest.approx((labels > 0).sum() * voxel)
    assert row["status"] == "ok" and row["reason"] == ""


def test_msd_label_maps_on_input_grid(segmenter, msd_images, tmp_path):
    seen = []
    summary = segmenter.run(
        _datalist(find_inputs(msd_images)), tmp_path, progress=False, on_result=lambda result, path: seen.append((result, path))
    )
    assert not summary.failures
    assert [(r.subject, p) for r, p in seen] == list(summary.label_maps.items())
    assert all(r.label_map.shape == nib.load(r.source).shape for r, _ in seen)
    rows = _read_volumes(tmp_path)
    assert [r["subject"] for r in rows] == [p.name[: -len(".nii.gz")] for p in msd_images]
    for image_path, row in zip(msd_images, rows):
        image, pred = nib.load(image_path), nib.load(tmp_path / image_path.name)
        assert pred.shape == image.shape
        assert np.array_equal(pred.affine, image.affine)
        assert pred.get_data_dtype() == np.uint8
        labels = np.asarray(pred.dataobj)
        assert set(np.unique(labels)) <= {0, 1, 2}
        assert (row["side"], row["mode"]) == ("unknown", "precropped")
        _check_volumes(row, labels, image.affine)


def test_dicom_series_label_maps(segmenter, dicom_dir, tmp_path):
    inputs = find_inputs(dicom_dir)
    assert len(inputs) == 3 and all(path.is_dir() for _, path in inputs)
    summary = segmenter.run(_datalist(inputs), tmp_path, progress=False)
    assert not summary.failures
    for (subject, folder), row in zip(inputs, _read_volumes(tmp_path)):
        scan = scan_loader(IMAGE)({IMAGE: str(folder)})[IMAGE]
        pred = nib.load(tmp_path / f"{subject}.nii.gz")
        assert pred.shape == tuple(scan.shape)
        np.testing.assert_allclose(pred.affine, scan.affine.numpy(), atol=1e-4)  # NIfTI stores the sform as float32
        assert row["mode"] == "precropped"
        _check_volumes(row, np.asarray(pred.dataobj), pred.affine)


def test_whole_brain_two_sides_on_input_grid(segmenter, mni_path, tmp_path):
    summary = segmenter.run(_datalist([("mni", mni_path)]), tmp_path, progress=False)
    assert not summary.failures
    image, pred = nib.load(mni_path), nib.load(tmp_path / "mni.nii.gz")
    assert pred.shape == image.shape and np.array_equal(pred.affine, image.affine)
    labels = np.asarray(pred.dataobj)
    rows = _read_volumes(tmp_path)
    assert [(r["side"], r["mode"]) for r in rows] == [("left", "registered"), ("right", "registered")]
    outside = np.ones(labels.shape, dtype=bool)
    for row, center in zip(rows, (DEFAULT_LEFT_CENTER, DEFAULT_RIGHT_CENTER)):
        box = tuple(slice(s, e) for s, e in zip(*world_box_to_voxels(image.affine, center, DEFAULT_BOX_SIZE)))
        outside[box] = False
        _check_volumes(row, labels[box], image.affine)
    assert not labels[outside].any()


def test_auto_mode_from_field_of_view(msd_images, dicom_dir, mni_path):
    auto = get_preprocessing(mode="auto", with_label=False)
    assert isinstance(auto({IMAGE: str(msd_images[0])}), dict)  # a crop: one sample
    assert [s["side"] for s in auto({IMAGE: str(mni_path)})] == ["left", "right"]  # a whole brain: two
    assert isinstance(get_preprocessing(mode="precropped", with_label=False)({IMAGE: str(mni_path)}), dict)
    series = sorted(p for p in dicom_dir.iterdir() if p.is_dir())[0]
    scan = get_loading(with_label=False)({IMAGE: str(series)})[IMAGE]
    assert HippocampalROICrop(mode="auto").resolve_mode(scan) == "precropped"
    np.testing.assert_allclose(field_of_view_mm(scan), np.asarray(scan.shape[1:]), rtol=1e-6)  # 1 mm after Spacingd


def test_find_inputs_kinds(msd_dir, dicom_dir, tmp_path):
    images = sorted((msd_dir / "imagesTr").glob("*.nii.gz"))[:2]
    folder = tmp_path / "mixed"
    folder.mkdir()
    for image in images:
        (folder / image.name).symlink_to(image)
    series = sorted(p for p in dicom_dir.iterdir() if p.is_dir())[0]
    (folder / "series").symlink_to(series)
    (folder / "notes.txt").write_text("not a scan")
    stems = [p.name[: -len(".nii.gz")] for p in images]
    assert [s for s, _ in find_inputs(folder)] == [*stems, "series"]
    assert find_inputs(series) == [(series.name, series)]
    assert find_inputs(str(images[0])) == [(stems[0], images[0])]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "subject_id,image,label,fold\n"
        + "".join(f"{s},imagesTr/{p.name},labelsTr/{p.name},{i}\n" for i, (s, p) in enumerate(zip(stems, images)))
    )
    assert find_inputs(manifest, dataset_dir=msd_dir) == [(s, p) for s, p in zip(stems, images)]
    assert find_inputs(manifest, dataset_dir=msd_dir, fold=1) == [(stems[1], images[1])]


MANIFEST = "subject_id,image,label,fold\ns,s.nii.gz,,0\n"


@pytest.mark.parametrize(
    "name, content, kwargs, match",
    [
        ("missing.nii.gz", None, {}, "no such file or folder"),
        (".", None, {}, "no scan file"),
        ("notes.txt", "x", {}, "expected a NIfTI or MGH file"),
        ("m.csv", MANIFEST, {}, "needs dataset_dir"),
        ("m.csv", MANIFEST, {"dataset_dir": ".", "fold": 3}, "no row with fold 3"),
    ],
)
def test_find_inputs_rejects_bad_paths(tmp_path, name, content, kwargs, match):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=match):
        find_inputs(tmp_path / name, **kwargs)


def test_find_inputs_rejects_subject_id_clash(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="share subject ids.*x"):
        find_inputs([tmp_path / "a", tmp_path / "b"])


def test_bad_scan_fails_alone(segmenter, msd_images, tmp_path):
    truncated = tmp_path / "inputs" / "truncated.nii.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(msd_images[0].read_bytes()[:2000])
    not_nifti = tmp_path / "inputs" / "text.nii"
    not_nifti.write_text("not a NIfTI file")
    inputs = [("good", msd_images[0]), ("truncated", truncated), ("text", not_nifti)]
    summary = segmenter.run(_datalist(inputs), tmp_path / "out", progress=False)
    assert set(summary.label_maps) == {"good"} and (tmp_path / "out" / "good.nii.gz").is_file()
    assert set(summary.failures) == {"truncated", "text"}
    for subject, path in inputs[1:]:
        assert str(path) in summary.failures[subject]
    rows = _read_volumes(tmp_path / "out")
    assert [(r["subject"], r["status"]) for r in rows] == [("good", "ok"), ("truncated", "failed"), ("text", "failed")]
    assert rows[2]["total_mm3"] == "" and str(not_nifti) in rows[2]["reason"]
    with pytest.raises(RuntimeError, match="2 of 3 scan"):
        summary.raise_on_failure()


@pytest.mark.parametrize("target", ["a_file", "a_file/below"])
def test_unwritable_output_folder(segmenter, msd_images, tmp_path, target):
    (tmp_path / "a_file").write_text("a file, not a folder")
    with pytest.raises(ValueError, match=f"output folder .*{target}"):
        segmenter.run(_datalist([("s", msd_images[0])]), tmp_path / target, progress=False)


def test_incompatible_checkpoint_names_the_file(narrow_weights, tmp_path):
    other = save_random_weights(tmp_path / "other.pt", {**NARROW, "network_def#channels": [8, 16, 16, 16]})
    with pytest.raises(ValueError, match=f"weights {other} do not fit.*shapes"):
        segmenter_from_bundle(overrides={**NARROW, **CPU, "ckpt_path": str(other)})
    unet = torch.nn.Conv2d(1, 3, 1)
    with pytest.raises(ValueError, match=f"weights {narrow_weights} do not fit the network Conv2d.*missing keys"):
        load_generator(narrow_weights, unet)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=f"cannot read weights {garbage}"):
        load_generator(garbage, unet)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_generator(tmp_path / "missing.pt", unet)


def _constant_network(label: int) -> torch.nn.Module:
    """A 2D "generator" predicting ``label`` everywhere."""
    network = torch.nn.Conv2d(1, 3, kernel_size=1)
    with torch.no_grad():
        network.weight.zero_()
        network.bias.copy_(5.0 * torch.nn.functional.one_hot(torch.tensor(label), 3).float())
    return network


def test_empty_prediction_gives_empty_map_and_warning(msd_images, tmp_path, caplog):
    background = _constant_network(0)
    precropped = get_preprocessing(mode="precropped", with_label=False)
    with caplog.at_level(logging.WARNING, logger="hippogan.pipeline.segmenter"):
        summary = Segmenter(background, preprocessing=precropped).run(_datalist([("s", msd_images[0])]), tmp_path, False)
    assert "no hippocampus found" in caplog.text and "s:" in caplog.text
    assert not np.asarray(nib.load(summary.label_maps["s"]).dataobj).any()
    assert float(_read_volumes(tmp_path)[0]["total_mm3"]) == 0.0


def test_failing_result_hook_fails_its_scan(msd_images, tmp_path):
    def hook(result, path):
        raise RuntimeError(f"QC picture of {result.subject} broke")

    summary = Segmenter(_constant_network(1)).run(_datalist([("s", msd_images[0])]), tmp_path, False, on_result=hook)
    assert not summary.label_maps and "QC picture of s broke" in summary.failures["s"]


def test_largest_component_per_side(segmenter, msd_images):
    labels = torch.zeros(1, 20, 20, 20, dtype=torch.uint8)
    labels[0, 2:6, 2:6, 2:6] = 1  # 64 voxels, label 1 touching label 2 below: one component of 128
    labels[0, 6:10, 2:6, 2:6] = 2
    labels[0, 14:17, 14:17, 14:17] = 2  # 27 voxels apart
    kept = KeepLargestComponent()(labels)
    assert int((kept == 1).sum()) == 64 and int((kept == 2).sum()) == 64 and not kept[0, 14:, 14:, 14:].any()
    result = segmenter.segment(msd_images[0])
    assert ndimage.label(result.label_map > 0, structure=np.ones((3, 3, 3)))[1] <= 1


def test_empty_plane_skipper_matches_the_network():
    torch.manual_seed(0)
    layers = (torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 3, 1))
    network = torch.nn.Sequential(*layers).eval()
    some_empty = torch.rand(6, 1, 16, 16)
    some_empty[[0, 3, 5]] = 0
    with torch.inference_mode():
        for x in (some_empty, torch.zeros(2, 1, 16, 16), torch.rand(2, 1, 16, 16)):
            np.testing.assert_allclose(EmptyPlaneSkipper(network)(x), network(x), atol=1e-6)


def test_segmenter_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown mode"):
        HippocampalROICrop(mode="brain")
    with pytest.raises(ValueError, match="give postprocessing"):
        Segmenter(torch.nn.Conv2d(1, 3, 1), preprocessing=lambda data: data)


def test_segmenter_from_bundle_needs_a_config(tmp_path):
    shutil.copytree(DEFAULT_BUNDLE / "configs", tmp_path / "configs", ignore=shutil.ignore_patterns("inference.yaml"))
    with pytest.raises(ValueError, match="inference.yaml not found"):
        segmenter_from_bundle(tmp_path)


def test_self_agreement_ranks_certainty():
    """1 for a crisp map; lower when probability mass lies off the map or the map rests on uncertain voxels."""
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[2:6, 2:6] = True
    assert self_agreement(mask.float(), mask) == pytest.approx(1.0)
    blurred = torch.as_tensor(ndimage.gaussian_filter(mask.numpy().astype(np.float32), 1.0))
    halo = mask.float() * 0.9 + (~mask).float() * 0.05
    assert 0.0 < self_agreement(blurred, mask) < self_agreement(halo, mask) < 1.0
    assert np.isnan(self_agreement(torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.bool)))


def test_confidence_column_filled(msd_images, tmp_path):
    """The shipped model on real crops: a confidence per row, in (0.9, 1] for MSD-like crops."""
    shipped = segmenter_from_bundle(overrides={"device": "$torch.device('cpu')"})
    summary = shipped.run(_datalist([(p.name.split(".")[0], p) for p in msd_images[:2]]), tmp_path, progress=False)
    rows = _read_volumes(tmp_path)
    assert len(rows) == 2 and not summary.failures
    assert all(0.9 < float(row["confidence"]) <= 1.0 for row in rows)


def test_low_confidence_threshold_follows_the_model():
    """The bundle's "check this scan" level, the 10th percentile of each kind of model's CV confidence: 0.932 for
    the shipped multi-view ensemble (and for its sagittal + coronal pair), 0.939 for two sagittal generators, 0.948
    for one."""
    cpu = {"device": "$torch.device('cpu')"}
    assert segmenter_from_bundle(overrides=cpu).low_confidence == pytest.approx(0.932)
    pair = [str(DEFAULT_BUNDLE / "models" / name) for name in ("model.pt", "model_coronal.pt")]
    two = {"ckpt_paths": pair, "ckpt_views": ["sagittal", "sagittal"]}
    assert segmenter_from_bundle(overrides={**cpu, **two}).low_confidence == pytest.approx(0.939)
    assert segmenter_from_bundle(overrides={**cpu, "ensemble": False}).low_confidence == pytest.approx(0.948)
    assert segmenter_from_bundle(overrides={**cpu, "low_confidence": None}).low_confidence is None


def _narrow_network_def() -> dict:
    """The bundle's ``network_def`` config with :data:`NARROW` widths (a base for ``member_network_defs``)."""
    parser = ConfigParser()
    parser.read_config(str(DEFAULT_BUNDLE / "configs" / "inference.yaml"))
    parser.update(NARROW)
    return dict(parser.get("network_def"))


def test_bundle_ensemble_of_a_2d_and_a_3d_generator(narrow_weights, msd_images, tmp_path):
    """``member_network_defs`` gives each file its own network; a ``volume`` member runs on the whole ROI."""
    three_d = save_random_weights(tmp_path / "model_3d.pt", {**NARROW, "network_def#spatial_dims": 3})
    two_d = _narrow_network_def()
    overrides = {**CPU, "mode": "precropped", "ckpt_paths": [str(narrow_weights), str(three_d)],
                 "ckpt_views": ["sagittal", "volume"], "roi_size": [32, 64, 64],
                 "member_network_defs": [two_d, {**two_d, "spatial_dims": 3}]}  # fmt: skip
    segmenter = segmenter_from_bundle(overrides=overrides)
    assert isinstance(segmenter.network, ProbabilityEnsemble) and segmenter.network.views == ("sagittal", "volume")
    result = segmenter.segment(msd_images[0])
    assert result.label_map.shape == nib.load(msd_images[0]).shape
    with pytest.raises(ValueError, match="2 weights files but 1 networks"):
        segmenter_from_bundle(overrides={**overrides, "member_network_defs": [two_d]})
    alone = {**NARROW, **CPU, "mode": "precropped", "roi_size": [32, 64, 64], "network_def#spatial_dims": 3,
             "ckpt_path": str(three_d), "ckpt_views": ["volume"]}  # fmt: skip
    assert segmenter_from_bundle(overrides=alone).segment(msd_images[0]).label_map.shape == result.label_map.shape


def test_bundle_runs_a_2_5d_generator(msd_images, tmp_path):
    """``context`` stacks the sagittal neighbours as channels, as training's ``train#preprocessing#context``."""
    weights = save_random_weights(tmp_path / "model_ctx.pt", {**NARROW, "network_def#in_channels": 3})
    overrides = {**NARROW, **CPU, "network_def#in_channels": 3, "ckpt_path": str(weights), "mode": "precropped"}
    segmenter = segmenter_from_bundle(overrides={**overrides, "context": 1})
    sample = segmenter.preprocessing({IMAGE: str(msd_images[0])})
    assert sample[IMAGE].shape == (3, 48, 64, 64)
    torch.testing.assert_close(sample[IMAGE][0, 1:], sample[IMAGE][1, :-1])  # channel 0: the plane x - 1
    assert segmenter.segment(msd_images[0]).label_map.shape == nib.load(msd_images[0]).shape


def test_bundle_ensemble_of_a_2_5d_and_a_1_channel_generator(narrow_weights, msd_images, tmp_path):
    """``member_contexts``: the ensemble stacks the 2.5D member's neighbours, the preprocessing none; alone
    (``ensemble: false``), the first generator's context goes back to the preprocessing."""
    weights = save_random_weights(tmp_path / "model_ctx.pt", {**NARROW, "network_def#in_channels": 3})
    one = _narrow_network_def()
    overrides = {**CPU, "mode": "precropped", "ckpt_paths": [str(weights), str(narrow_weights)],
                 "ckpt_views": ["sagittal", "coronal"], "member_contexts": [1, 0],
                 "member_network_defs": [{**one, "in_channels": 3}, one]}  # fmt: skip
    segmenter = segmenter_from_bundle(overrides=overrides)
    assert segmenter.preprocessing({IMAGE: str(msd_images[0])})[IMAGE].shape == (1, 48, 64, 64)
    assert segmenter.segment(msd_images[0]).label_map.shape == nib.load(msd_images[0]).shape
    alone = segmenter_from_bundle(overrides={**overrides, "ensemble": False})
    assert alone.preprocessing({IMAGE: str(msd_images[0])})[IMAGE].shape == (3, 48, 64, 64)
    assert alone.segment(msd_images[0]).label_map.shape == nib.load(msd_images[0]).shape
