"""Fixtures: tiny real bundles (see runtime_bundles.py) for the runtime tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from runtime_bundles import write_tiny_bundle


@pytest.fixture(scope="session")
def tiny_bundle_template(tmp_path_factory) -> Path:
    """A complete tiny bundle, built once per session; copy it before changing it."""
    root = tmp_path_factory.mktemp("template") / "tiny"
    write_tiny_bundle(root)
    return root


@pytest.fixture
def tiny_bundle(tiny_bundle_template, tmp_path) -> Path:
    """A fresh copy of the tiny bundle that a test may modify."""
    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_template, root)
    return root


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_bundle_template):
    """A pipeline on the (unmodified) tiny bundle, shared by tests that only read it."""
    from latent_onnx import Pipeline

    return Pipeline.from_bundle(tiny_bundle_template, device="cpu", threads=1)


@pytest.fixture
def run(monkeypatch, tmp_path):
    """Run the CLI in an empty working folder `tmp_path/work`; returns click's Result."""
    from latent_onnx.cli import cli

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def invoke(*args):
        return CliRunner().invoke(cli, [str(a) for a in args])

    return invoke
