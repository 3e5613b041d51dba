"""The bench's dataset section on the tiny bundle (local runs only; no timing assertions)."""

from __future__ import annotations

from bench.dataset import dataset_section, markdown_lines


def test_dataset_section_times_each_run_and_reports_the_ratio(bundle):
    said = []
    section = dataset_section(
        bundle, said.append, per_class=8, shard_size=4, runs=("local, 1 worker", "local, 2 workers")
    )
    assert list(section["runs"]) == ["local, 1 worker", "local, 2 workers"] and len(said) == 2
    for run in section["runs"].values():
        assert run["images"] == 24 and run["shards"] == 6 and run["images_per_s"] > 0 and run["wall_s"] > 0
    assert (
        section["two_workers_over_one"]
        == section["runs"]["local, 2 workers"]["images_per_s"] / section["runs"]["local, 1 worker"]["images_per_s"]
    )
    table = "\n".join(markdown_lines(section))
    assert "| local, 2 workers | " in table and "2 local workers / 1: " in table
