"""Fixtures: tiny real bundles (see runtime_bundles.py) for the runtime tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
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
