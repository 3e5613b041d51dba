"""Fixtures: the tiny real bundle of tests/runtime, datasets written from it, and file-tree helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runtime"))
from runtime_bundles import write_tiny_bundle  # noqa: E402


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """The tiny bundle (3 classes, 4x4 images, 20 steps), at one path for the whole session (the path is
    part of every PNG's reproduce command)."""
    root = tmp_path_factory.mktemp("dataset-bundle") / "tiny"
    write_tiny_bundle(root)
    return root


def files_of(out: Path) -> dict[str, bytes]:
    """Every file of a dataset folder (relative path -> bytes), without the lock file."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "lock"
    }
