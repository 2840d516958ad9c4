"""Workflows of hippogan: manifests, GAN training, inference, metrics and the command line.

``hippogan`` itself is a namespace package, so the package version lives here: ``hippogan.pipeline.__version__``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("hippogan")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
