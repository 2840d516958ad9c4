"""Label-value mapping: bring each source's label convention to the project's {0, 1, 2}.

Sources disagree on label values. The Medical Segmentation Decathlon uses 1 (anterior) and 2
(posterior hippocampus); a binary mask uses 1; a FreeSurfer ``aseg`` uses 17 (left) and 53 (right
hippocampus) among many other structures. A *label map* says which source value becomes which
target value and what every unlisted value becomes (0 unless the spec says otherwise). Unlike
MONAI's ``MapLabelValue``, which leaves unlisted values untouched, unlisted values are *replaced*,
so the other ``aseg`` structures become background.

Label-map specs accepted by :func:`parse_label_map` (and the ``--label-map`` CLI option):

- ``None``, ``""`` or ``"msd"``: identity, values kept as they are (MSD already is {0, 1, 2}).
- ``"binary"``: every non-zero value -> 1 (same as ``"0:0,*:1"``).
- ``"aseg"``: FreeSurfer 17 and 53 -> 1, everything else -> 0 (same as ``"17:1,53:1"``).
- ``"SRC:DST,SRC:DST,..."``: listed integer values mapped, unlisted values -> 0; the key ``*``
  sets the value given to unlisted voxels instead (``"0:0,*:1"``).
- a mapping ``{17: 1, 53: 1}`` (keys may be integer strings, as JSON gives them; ``"*"`` as above).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

__all__ = [
    "LABEL_MAP_PRESETS",
    "LabelMap",
    "parse_label_map",
    "MapLabels",
    "MapLabelsd",
    "MapLabelsD",
    "MapLabelsDict",
]

LABEL_MAP_PRESETS: dict[str, str | None] = {
    "msd": None,
    "binary": "0:0,*:1",
    "aseg": "17:1,53:1",
}
"""Named label maps: preset name -> spec string (``None`` = identity)."""


class LabelMap(dict):
    """A ``dict[int, int]`` from source label value to target value, plus the target of unlisted values.

    Args:
        mapping: source value -> target value (integers).
        default: the value every voxel whose value is not a key of ``mapping`` becomes.
    """

    def __init__(self, mapping: Mapping[int, int] | None = None, default: int = 0) -> None:
        super().__init__(mapping or {})
        self.default = default

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and getattr(other, "default", 0) == self.default

    def __repr__(self) -> str:
        return f"LabelMap({dict(self)!r}, default={self.default})"

    def targets(self) -> set[int]:
        """Every value a mapped label can hold."""
        return set(self.values()) | {self.default}


def _as_int(value: object, spec: object) -> int:
    """``value`` as an ``int`` (ints or integer strings); ``ValueError`` naming ``spec`` otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"label map {spec!r}: expected integer label values, got {value!r}")


def parse_label_map(spec: str | Mapping | None) -> LabelMap | None:
    """Parse a label-map spec (see the module docstring) into a :class:`LabelMap`.

    Args:
        spec: ``None``, a preset name (``"msd"``, ``"binary"``, ``"aseg"``), a ``"SRC:DST,..."``
            string or a mapping of source to target values.

    Returns:
        ``None`` for the identity (labels kept as they are), else a :class:`LabelMap`
        (a ``dict[int, int]``) whose ``default`` is the value of unlisted voxels.

    Raises:
        ValueError: unknown preset, malformed pair, non-integer value, conflicting or no pairs.
    """
    if spec is None or isinstance(spec, LabelMap):
        return spec
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in LABEL_MAP_PRESETS:
            preset = LABEL_MAP_PRESETS[text.lower()]
            return None if preset is None else parse_label_map(preset)
        if not text:
            return None
        pairs = []
        for item in text.split(","):
            parts = item.split(":")
            if len(parts) != 2:
                raise ValueError(
                    f"label map {spec!r}: expected a preset ({', '.join(LABEL_MAP_PRESETS)}) "
                    f"or comma-separated SRC:DST pairs, got item {item.strip()!r}"
                )
            pairs.append((parts[0].strip(), parts[1]))
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        raise ValueError(f"label map: expected None, a string or a mapping, got {type(spec).__name__}")
    mapping: dict[int, int] = {}
    default = 0
    for src, dst in pairs:
        target = _as_int(dst, spec)
        if src == "*":
            default = target
            continue
        key = _as_int(src, spec)
        if mapping.get(key, target) != target:
            raise ValueError(f"label map {spec!r}: value {key} mapped to both {mapping[key]} and {target}")
        mapping[key] = target
    if not pairs:
        raise ValueError(f"label map {spec!r}: no SRC:DST pairs")
    return LabelMap(mapping, default=default)


class MapLabels(Transform):
    """Map label values with a label map; unlisted values become the map's ``default`` (0).

    Args:
        label_map: any spec :func:`parse_label_map` accepts; ``None`` (or ``"msd"``) passes labels through.

    Shape and type are kept: an array or tensor of any shape (e.g. ``(C, H, W, D)``) in, the same
    shape, type, dtype and (for a ``MetaTensor``) metadata out.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, label_map: str | Mapping | None) -> None:
        self.label_map = parse_label_map(label_map)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return ``img`` with every value mapped (``img`` itself when the map is the identity)."""
        if self.label_map is None:
            return img
        src = img.as_tensor() if isinstance(img, MetaTensor) else img
        if isinstance(src, torch.Tensor):
            out = torch.full_like(src, self.label_map.default)
        else:
            src = np.asarray(src)
            out = np.full_like(src, self.label_map.default)
        for value, target in self.label_map.items():
            out[src == value] = target
        return convert_to_dst_type(out, dst=img)[0]


class MapLabelsd(MapTransform):
    """Dictionary-based wrapper of :class:`MapLabels` (label keys only: the image is not a label).

    Args:
        keys: keys of the labels to map, e.g. ``"label"``.
        label_map: any spec :func:`parse_label_map` accepts; ``None`` passes labels through.
        allow_missing_keys: don't raise if a key is missing (e.g. unlabelled subjects).
    """

    backend = MapLabels.backend

    def __init__(self, keys: KeysCollection, label_map: str | Mapping | None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mapper = MapLabels(label_map)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Return a copy of ``data`` with each key's label mapped."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.mapper(d[key])
        return d


MapLabelsD = MapLabelsDict = MapLabelsd
