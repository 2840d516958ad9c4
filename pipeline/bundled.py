"""Where the shipped MONAI bundle lives: :data:`DEFAULT_BUNDLE`, the ``hippocampus_resse_gan`` bundle folder.

The bundle is package data of ``hippogan.bundles`` (the repository's ``bundles/`` folder, see
``setup.cfg``): an editable install finds it in the checkout, ``pip install .`` in site-packages.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["DEFAULT_BUNDLE"]

DEFAULT_BUNDLE = Path(str(files("hippogan.bundles"))) / "hippocampus_resse_gan"
"""The bundle folder (``configs/``, ``models/``, ``docs/``) used when no ``--bundle`` is given."""
