"""A plain (non-editable) build carries the shipped bundles, and the installed command finds its default."""

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building a wheel offline needs setuptools")
@pytest.mark.slow
def test_wheel_carries_shipped_bundles_and_the_command_finds_the_default(tmp_path, tiny_bundle_template):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (REPO_ROOT / name).exists():
            shutil.copy(REPO_ROOT / name, source / name)
    if not (source / "README.md").exists():
        (source / "README.md").write_text("latent-onnx\n")
    for package in ("latent_onnx", "export_tools"):
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tiny_bundle_template, source / "onnx_models" / "fashion-colors")

    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("latent_onnx-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "latent_onnx/models/fashion-colors/manifest.json" in archive.namelist()
        archive.extractall(tmp_path / "installed")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "LATENT_ONNX_BUNDLE"}
    env["PYTHONPATH"] = str(tmp_path / "installed")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from latent_onnx.cli import main; main()",
            "generate",
            "--class",
            "sneaker",
            "-n",
            "1",
            "--seed",
            "0",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (work / "out" / "sneaker-s0-0000.png").is_file()
