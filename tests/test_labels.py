"""Label maps: presets and spec strings parse, MapLabels(d) map listed values and zero the rest."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from hippogan.transforms.labels import LabelMap, MapLabels, MapLabelsd, parse_label_map

ASEG_LIKE = np.array([0, 2, 17, 41, 53, 1, 2, 17, 1035], dtype=np.int32)


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, None),
        ("", None),
        ("msd", None),
        ("MSD", None),
        ("binary", LabelMap({0: 0}, default=1)),
        ("aseg", LabelMap({17: 1, 53: 1})),
        ("17:1,53:1", LabelMap({17: 1, 53: 1})),
        (" 17 : 1 , 53:2 ", LabelMap({17: 1, 53: 2})),
        ("0:0,*:1", LabelMap({0: 0}, default=1)),
        ({17: 1, 53: 1}, LabelMap({17: 1, 53: 1})),
        ({"17": 1, "53": "1"}, LabelMap({17: 1, 53: 1})),
    ],
)
def test_parse_label_map(spec, expected):
    parsed = parse_label_map(spec)
    assert parsed == expected
    if expected is not None:
        assert parsed.default == expected.default


@pytest.mark.parametrize(
    "spec, message",
    [
        ("hippo", "expected a preset"),
        ("17", "SRC:DST pairs"),
        ("17:1:2", "SRC:DST pairs"),
        ("a:1", "expected integer"),
        ("17:1.5", "expected integer"),
        ("17:1,17:2", "mapped to both"),
        ({}, "no SRC:DST pairs"),
        ({17: True}, "expected integer"),
        (17, "expected None, a string or a mapping"),
    ],
)
def test_parse_label_map_rejects(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_label_map(spec)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("aseg", [0, 0, 1, 0, 1, 0, 0, 1, 0]),
        ("binary", [0, 1, 1, 1, 1, 1, 1, 1, 1]),
        ("17:1,53:2", [0, 0, 1, 0, 2, 0, 0, 1, 0]),
        ("msd", ASEG_LIKE.tolist()),
    ],
)
@pytest.mark.parametrize("kind", ["numpy", "torch", "meta"])
def test_map_labels(spec, expected, kind):
    img = {"numpy": ASEG_LIKE.copy(), "torch": torch.as_tensor(ASEG_LIKE), "meta": MetaTensor(ASEG_LIKE, meta={"filename_or_obj": "x.nii.gz"})}[kind]
    out = MapLabels(spec)(img)
    assert type(out) is type(img) and out.dtype == img.dtype and out.shape == img.shape
    assert np.asarray(out).tolist() == expected
    if kind == "meta":
        assert out.meta["filename_or_obj"] == "x.nii.gz"
    if spec != "msd":
        assert np.asarray(img).tolist() == ASEG_LIKE.tolist()  # input untouched


def test_map_labelsd_maps_only_its_keys():
    data = {"image": torch.full((1, 3, 3, 3), 17.0), "label": torch.full((1, 3, 3, 3), 53.0)}
    out = MapLabelsd("label", "aseg")(data)
    assert torch.all(out["label"] == 1) and torch.all(out["image"] == 17)
    assert MapLabelsd("label", "aseg", allow_missing_keys=True)({"image": data["image"]}).keys() == {"image"}
    with pytest.raises(KeyError):
        MapLabelsd("label", "aseg")({"image": data["image"]})


def test_binary_on_real_msd_label(msd_dir):
    label = np.asanyarray(nib.load(msd_dir / "labelsTr" / "hippocampus_001.nii.gz").dataobj)
    out = MapLabelsd("label", "binary")({"label": MetaTensor(label[None])})["label"]
    assert set(np.unique(label)) == {0, 1, 2}
    assert set(torch.unique(out).tolist()) == {0, 1}
    assert int((out > 0).sum()) == int((label > 0).sum())
