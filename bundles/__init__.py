"""The MONAI bundles shipped with hippogan, as package data (configs, docs, weights; no code).

Installed as ``hippogan.bundles`` so that :data:`hippogan.pipeline.bundled.DEFAULT_BUNDLE` finds the
bundle through :mod:`importlib.resources`, in an editable install and in site-packages alike.
"""
