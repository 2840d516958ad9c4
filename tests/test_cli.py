"""The command line answers --help as a module and as a console script."""

from __future__ import annotations

import subprocess
import sys


def test_module_help():
    out = subprocess.run([sys.executable, "-m", "hippogan.pipeline", "--help"], capture_output=True, text=True, check=True)
    assert "hippogan" in out.stdout
