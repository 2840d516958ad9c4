"""Packaging: the wheel carries the bundle, a copied bundle stands on its own, the package has a version.

The wheel is built from a clean copy of the sources that ``setup.cfg`` maps (setuptools never prunes an
in-tree ``build/lib``, so a stale module could ship, and a test must not write into the repository).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import requires, version
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

import hippogan.pipeline
from hippogan.pipeline.bundled import DEFAULT_BUNDLE
from hippogan.pipeline.manifest import load_manifest, select_folds

ROOT = Path(__file__).resolve().parents[1]
BUNDLE_NAME = DEFAULT_BUNDLE.name
SHIPPED = (
    "LICENSE",
    "configs/*.yaml",
    "configs/*.json",
    "configs/*.conf",
    "configs/*.csv",
    "docs/*.md",
    "models/model.pt",
    "models/model_coronal.pt",
    "models/model_3d.pt",
)
"""The bundle's files that the wheel must carry (as ``setup.cfg``'s package_data), relative to the bundle."""
PATH_KEYS = ("dataset_dir", "manifest", "input", "output_dir", "ckpt_path", "ckpt_dir")
"""Config ids holding paths: their defaults must stay inside the bundle."""


def shipped_files(bundle: Path) -> dict[str, int]:
    """The bundle's files matching :data:`SHIPPED`: POSIX path relative to ``bundle`` -> size in bytes."""
    return {p.relative_to(bundle).as_posix(): p.stat().st_size for pattern in SHIPPED for p in bundle.glob(pattern)}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of a copy of the sources ``setup.cfg`` maps (its ``package_dir`` folders and metadata files)."""
    src = tmp_path_factory.mktemp("src")
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")
    folders = [line.split("=")[1].strip() for line in cfg["options"]["package_dir"].strip().splitlines()]
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for folder in folders:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    (path,) = out.glob("hippogan-*.whl")
    return path


def test_wheel_ships_the_bundle(wheel: Path) -> None:
    """Configs, manifest, docs, LICENSE and weights in ``hippogan/bundles/``; nothing else of the bundle folder."""
    with zipfile.ZipFile(wheel) as z:
        sizes = {info.filename: info.file_size for info in z.infolist()}
    prefix = f"hippogan/bundles/{BUNDLE_NAME}/"
    in_wheel = {name.removeprefix(prefix): size for name, size in sizes.items() if name.startswith(prefix)}
    expected = shipped_files(DEFAULT_BUNDLE)
    assert {"configs/inference.yaml", "configs/msd_hippocampus.csv", "models/model.pt"} <= set(expected)
    assert in_wheel == expected  # no runs/, eval/ or exports of local work
    assert "hippogan/pipeline/bundled.py" in sizes
    assert any(re.fullmatch(r"hippogan-[^/]+\.dist-info/(licenses/)?LICENSE", name) for name in sizes)


@pytest.mark.slow
def test_installed_wheel_segments_the_demo(wheel: Path, tmp_path: Path) -> None:
    """``hippogan segment --demo`` from a non-editable install, run from a folder outside the repository.

    The fresh venv sees this environment's packages (torch, MONAI, ...) through a ``.pth`` line, but not its
    editable hippogan, whose finder a ``.pth`` of a path-added folder does not load.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    site = subprocess.run(purelib, check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "test_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, text=True)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [python, "-c", "from hippogan.pipeline.bundled import DEFAULT_BUNDLE; print(DEFAULT_BUNDLE)"],
        cwd=tmp_path, env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert Path(where) == Path(site) / "hippogan" / "bundles" / BUNDLE_NAME
    assert (Path(where) / "configs" / "inference.yaml").is_file() and (Path(where) / "models" / "model.pt").is_file()

    demo = [venv / "bin" / "hippogan", "segment", "--demo", "--out", "demo"]
    run = subprocess.run(demo, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "demo" / "volumes.csv").stat().st_size > 0


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle copied out of the repository, links followed (as a user would copy it)."""
    root = tmp_path_factory.mktemp("copied") / BUNDLE_NAME
    shutil.copytree(DEFAULT_BUNDLE, root, symlinks=False, ignore=shutil.ignore_patterns("runs", "eval", "*.ts"))
    return root


@pytest.mark.parametrize(
    "configs",
    [
        ["train.yaml"],
        ["train.yaml", "train_cpu.yaml"],
        ["train.yaml", "multi_gpu_train.yaml"],
        ["inference.yaml"],
        ["inference.yaml", "evaluate.yaml"],
    ],
)
def test_copied_bundle_defaults_stay_inside(bundle_copy: Path, configs: list[str]) -> None:
    """Every path default of each config combination resolves inside the copy (only ``bundle_root`` set)."""
    parser = ConfigParser()
    parser.read_config([str(bundle_copy / "configs" / name) for name in configs])
    parser.update({"bundle_root": str(bundle_copy)})
    keys = [key for key in PATH_KEYS if key in parser]
    assert "dataset_dir" in keys and "output_dir" in keys
    for key in keys:
        value = parser.get_parsed_content(key)
        for path in value if isinstance(value, list) else [value]:  # ckpt_path: the ensemble's files
            assert Path(path).resolve().is_relative_to(bundle_copy.resolve()), f"{'+'.join(configs)}: {key} = {path}"


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # config's 4 workers on 2 cores
def test_copied_bundle_trains_with_dataset_dir_only(bundle_copy: Path, msd_dir: Path, tmp_path: Path) -> None:
    """``train.yaml`` of the copy initialises and passes MONAI's property check on its own manifest."""
    configs = bundle_copy / "configs"
    workflow = ConfigWorkflow(
        config_file=str(configs / "train.yaml"),
        meta_file=str(configs / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=str(bundle_copy),
        dataset_dir=str(msd_dir),
        output_dir=str(tmp_path / "run"),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert Path(workflow.parser.get_parsed_content("manifest")) == configs / "msd_hippocampus.csv"
    datalist = workflow.parser.get_parsed_content("datalist")
    assert len(datalist) == 200 and all(Path(row["image"]).is_file() for row in datalist)


@pytest.mark.shared_data
def test_copied_bundle_evaluates_with_dataset_dir_only(bundle_copy: Path, msd_dir: Path, tmp_path: Path) -> None:
    """``inference.yaml`` + ``evaluate.yaml`` of the copy read its own manifest: 20 scans in fold 0, all present."""
    configs = bundle_copy / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "inference.yaml"), str(configs / "evaluate.yaml")])
    parser.update({"bundle_root": str(bundle_copy), "dataset_dir": str(msd_dir), "output_dir": str(tmp_path)})
    manifest = Path(parser.get_parsed_content("manifest"))
    assert manifest == configs / "msd_hippocampus.csv"
    rows = select_folds(load_manifest(manifest, parser.get_parsed_content("dataset_dir")), folds=[parser["fold"]])
    assert len(rows) == 20 and all(Path(row["image"]).is_file() and Path(row["label"]).is_file() for row in rows)


def test_version_is_the_distribution_version() -> None:
    """``hippogan.pipeline.__version__`` is the installed distribution's version."""
    assert hippogan.pipeline.__version__ == version("hippogan")


def test_metadata_declares_every_requirement() -> None:
    """The bundle's ``required_packages_version`` names hippogan at this version and each of its requirements."""
    meta = json.loads((DEFAULT_BUNDLE / "configs" / "metadata.json").read_text())
    declared = {name.lower(): v for name, v in meta["required_packages_version"].items()}
    assert declared["hippogan"] == version("hippogan")
    own_fields = {"torch", "monai", "numpy"}  # pytorch_version, monai_version, numpy_version
    runtime = [req for req in requires("hippogan") or [] if "extra ==" not in req]
    needed = {re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower() for req in runtime}
    assert needed - own_fields <= set(declared), sorted(needed - own_fields - set(declared))
