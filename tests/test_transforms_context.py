"""2.5D input: neighbouring sagittal planes as channels, and predictions still invert exactly."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from hippogan.transforms import IMAGE, LABEL, PRED, SagittalContext, SagittalContextd, get_postprocessing, get_preprocessing


@pytest.mark.parametrize("context", [0, 1, 2])
def test_planes_hold_their_neighbours(context):
    volume = torch.arange(2 * 5 * 3 * 3, dtype=torch.float32).reshape(2, 5, 3, 3)
    out = SagittalContext(context)(volume)
    assert out.shape == (2 * (2 * context + 1), 5, 3, 3)
    for k in range(2 * context + 1):
        shift = k - context
        for x in range(5):
            expected = volume[:, x + shift] if 0 <= x + shift < 5 else torch.zeros(2, 3, 3)
            torch.testing.assert_close(out[2 * k : 2 * k + 2, x], expected)


def test_a_batch_stacks_each_volume_as_alone():
    batch = torch.randn(3, 2, 5, 4, 4)
    out = SagittalContext(1)(batch)
    assert out.shape == (3, 6, 5, 4, 4)
    for b in range(3):
        torch.testing.assert_close(out[b], SagittalContext(1)(batch[b]))


@pytest.mark.parametrize("context", [-1, 1.5])
def test_rejects_bad_context(context):
    with pytest.raises(ValueError, match="context"):
        SagittalContextd(IMAGE, context=context)


def test_msd_prediction_inverts_exactly_with_context(msd_dir: Path):
    image = sorted((msd_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[0]
    case = {IMAGE: str(image), LABEL: str(msd_dir / "labelsTr" / image.name)}
    pre = get_preprocessing(mode="precropped", with_label=True, context=1)
    sample = pre(case)
    assert sample[IMAGE].shape == (3, 48, 64, 64) and sample[LABEL].shape == (1, 48, 64, 64)
    torch.testing.assert_close(sample[IMAGE][0, 1:], sample[IMAGE][1, :-1])  # channel 0: the plane at x - 1
    sample[PRED] = sample[LABEL].clone()
    inverted = get_postprocessing(pre, argmax=False)(sample)[PRED]
    label = nib.load(case[LABEL])
    np.testing.assert_array_equal(inverted[0].numpy(), np.asarray(label.dataobj))
