"""The inference-lever benchmark's building blocks (``benchmarks/bench_inference_levers.py``): the one-plane
anterior/posterior split and the test-time-augmentation inferer."""

from __future__ import annotations


import numpy as np
import torch
from helpers import load_benchmark

levers = load_benchmark("bench_inference_levers")


def test_split_by_plane_straightens_a_jagged_boundary() -> None:
    labels = np.zeros((6, 20, 6), dtype=np.uint8)
    labels[1:5, 2:18, 1:5] = 2
    labels[1:5, 10:18, 1:5] = 1  # anterior from y = 10 on (RAS: anterior at higher y)
    labels[1, 9, 1] = 1  # a stray anterior voxel below the boundary
    labels[2, 11, 2] = 2  # a stray posterior voxel above it
    split = levers.split_by_plane(labels)
    assert np.array_equal(split > 0, labels > 0)  # the hippocampus is kept as it is
    assert (split[:, :10] != 1).all() and (split[:, 10:] != 2).all()
    assert np.array_equal(levers.split_by_plane(np.zeros_like(labels)), np.zeros_like(labels))


def test_augmented_inferer_averages_probabilities_on_the_plain_grid() -> None:
    images = torch.zeros(2, 1, 8, 12, 10)
    images[:, :, 2:6, 3:9, 2:8] = 1.0

    def inferer(x: torch.Tensor, network) -> torch.Tensor:  # class 1 where the image is bright
        return torch.cat([torch.zeros_like(x), 8.0 * (x - 0.5)], dim=1)

    plain = inferer(images, None).softmax(dim=1)
    augmented = levers.AugmentedInferer(inferer, levers.TTA_SETS["rotz6"])(images, None)
    assert augmented.shape == (2, 2, 8, 12, 10)
    probabilities = augmented.exp()
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2, 8, 12, 10), atol=1e-4)
    assert torch.equal(probabilities.argmax(dim=1)[:, 3:5, 4:8, 3:7], plain.argmax(dim=1)[:, 3:5, 4:8, 3:7])
