"""Fixtures: `latent-onnx serve` processes on loopback ports, serving the tiny bundle of the runtime tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "runtime")]  # bench.serve; runtime_bundles (the tiny bundle)

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="the test extra is not installed")

import httpx  # noqa: E402
from runtime_bundles import write_tiny_bundle  # noqa: E402

from bench.serve import ServerProcess  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve") / "tiny"
    write_tiny_bundle(root)
    return root


@pytest.fixture(scope="session")
def server(tiny_bundle):
    """A server with the default settings, except at most 8 images per request."""
    with ServerProcess(tiny_bundle, "--max-n", "8") as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http
