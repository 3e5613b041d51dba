"""The serve section of the benchmark, on the tiny bundle of the runtime tests, in half-second points."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="the test extra is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from runtime_bundles import write_tiny_bundle  # noqa: E402

from bench.serve import markdown_lines, serve_section  # noqa: E402


def test_serve_section_times_http_and_the_python_api(tmp_path):
    write_tiny_bundle(tmp_path / "tiny")
    section = serve_section(tmp_path / "tiny", say=lambda line: None, seconds=0.5, concurrencies=(1, 4))
    assert section["bundle"] == "tiny" and section["class"] == "0" and section["server_rss_mb"] > 0
    assert [row["clients"] for row in section["rows"]] == [1, 4]
    for row in section["rows"]:
        for kind in ("http", "direct"):
            figures = row[kind]
            assert figures["requests"] > 0 and figures["statuses"] == {"200": figures["requests"]}
            assert 0 < figures["p50_s"] <= figures["p99_s"] and figures["requests_per_s"] > 0
    lines = markdown_lines(section)
    assert lines[0] == "## Serving (`latent-onnx serve`)" and sum(line.startswith("| 4 |") for line in lines) == 1
