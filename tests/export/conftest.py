"""One tiny bundle with every graph role, written once per test session (about 20 s on 2 cores)."""

from __future__ import annotations

import pytest
from tiny_networks import tiny_spec

from export_tools.bundle_writer import write_bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """(spec, report) of the tiny bundle; the spec's networks are the PyTorch reference."""
    spec = tiny_spec()
    report = write_bundle(tmp_path_factory.mktemp("bundles") / "tiny", spec)
    return spec, report
