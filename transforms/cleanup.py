"""Clean-up of a predicted label map: keep the largest connected component of the hippocampus."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from scipy import ndimage

__all__ = ["KeepLargestComponent", "KeepLargestComponentd", "KeepLargestComponentD", "KeepLargestComponentDict"]


class KeepLargestComponent(Transform):
    """Keep the largest connected component of all nonzero labels together; other voxels become 0.

    The anterior and posterior labels (1, 2) of one hippocampus touch, so they are one component; whatever
    else the network predicted (a speck in a neighbouring structure) is dropped. Uses ``scipy.ndimage.label``
    (MONAI's ``KeepLargestConnectedComponent`` needs scikit-image, which hippogan does not depend on).

    Args:
        connectivity: 1 (faces, 6-connectivity in 3D), 2 (edges) or 3 (corners, 26-connectivity).

    Shapes: ``(1, X, Y, Z)`` integer-valued label map in, same shape and type out (a MetaTensor keeps its meta).
    """

    def __init__(self, connectivity: int = 3) -> None:
        if connectivity not in (1, 2, 3):
            raise ValueError(f"KeepLargestComponent: connectivity must be 1, 2 or 3, got {connectivity!r}.")
        self.connectivity = connectivity

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Return ``img`` with every nonzero voxel outside its largest component set to 0."""
        plain = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        if plain.ndim != 4 or plain.shape[0] != 1:
            raise ValueError(f"KeepLargestComponent: expected a (1, X, Y, Z) label map, got {tuple(plain.shape)}.")
        structure = ndimage.generate_binary_structure(3, self.connectivity)
        components, count = ndimage.label(plain[0].cpu().numpy() > 0, structure=structure)
        if count <= 1:
            return img
        largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
        return img * torch.from_numpy(components == largest)[None].to(plain.device, plain.dtype)


class KeepLargestComponentd(MapTransform):
    """Dictionary wrapper of :class:`KeepLargestComponent`.

    Args:
        keys: keys of the ``(1, X, Y, Z)`` label maps.
        connectivity: as in :class:`KeepLargestComponent`.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, connectivity: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cleaner = KeepLargestComponent(connectivity)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cleaner(d[key])
        return d


KeepLargestComponentD = KeepLargestComponentDict = KeepLargestComponentd
