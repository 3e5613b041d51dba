"""The `dataset` section of `python -m bench`: images per second of `write_dataset` on one bundle, local
with 1 worker (all cores as ONNX Runtime threads, and 1 thread) and 2 workers, and on a new local Ray
cluster with 2 actors; every run on the same cores (all of the machine's).

Each run writes a webdataset of `per_class` images per class into a temporary folder. The rate is
taken from the first finished shard to the last (worker start-up and the Ray cluster's start left out),
and also over the whole call.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from latent_onnx.dataset import DatasetSettings, Progress, RunOptions, write_dataset

RUNS = {  # name -> (backend, workers, ONNX Runtime threads per worker; None: cores // workers)
    "local, 1 worker": ("local", 1, None),
    "local, 1 worker, 1 thread": ("local", 1, 1),
    "local, 2 workers": ("local", 2, None),
    "ray, 2 actors": ("ray", 2, None),
}


class _Clock(Progress):
    """The time and running image count of every finished shard."""

    def __init__(self):
        self.marks: list[tuple[float, int]] = []

    def shard_done(self, shard, count: int) -> None:
        done = self.marks[-1][1] + count if self.marks else count
        self.marks.append((time.perf_counter(), done))


def time_run(bundle: Path, per_class: int, shard_size: int, backend: str, workers: int, threads: int | None) -> dict:
    """One dataset run: images, steady images/s (first to last shard), and whole-call images/s."""
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="bench-dataset-") as out:
        began = time.perf_counter()
        summary = write_dataset(
            Path(out) / "ds",
            DatasetSettings(bundle=str(bundle), per_class=per_class, shard_size=shard_size, format="webdataset"),
            RunOptions(backend=backend, workers=workers, threads=threads, device="cpu"),
            clock,
        )
        wall = time.perf_counter() - began
    (first_t, first_n), (last_t, last_n) = clock.marks[0], clock.marks[-1]
    steady = (last_n - first_n) / (last_t - first_t) if last_t > first_t else None
    return {
        "backend": backend,
        "workers": workers,
        "threads": threads or max(1, (os.cpu_count() or 1) // workers),
        "images": summary.images,
        "shards": summary.shards,
        "wall_s": wall,
        "images_per_s": steady,
        "images_per_s_wall": summary.images / wall,
    }


def dataset_section(bundle: Path, say, per_class: int = 60, shard_size: int = 30, runs=tuple(RUNS)) -> dict:
    """Every run of RUNS named in `runs` on `bundle`, and the ratios the dataset targets are stated in."""
    try:
        import ray  # noqa: F401
    except ImportError:
        runs = [name for name in runs if RUNS[name][0] != "ray"]
        say("  no ray installed (pip install 'latent-onnx[ray]'): the Ray run is left out")
    out = {"bundle": str(bundle), "per_class": per_class, "shard_size": shard_size, "cores": os.cpu_count(), "runs": {}}
    for name in runs:
        result = time_run(bundle, per_class, shard_size, *RUNS[name])
        out["runs"][name] = result
        say(
            f"  dataset {name}: {result['images_per_s'] or 0:.1f} images/s from the first shard on "
            f"({result['images_per_s_wall']:.1f} over the whole call, {result['images']} images)"
        )
    rate = {name: run["images_per_s"] for name, run in out["runs"].items()}
    one = rate.get("local, 1 worker")
    if one:
        out["two_workers_over_one"] = rate.get("local, 2 workers") and rate["local, 2 workers"] / one
        out["ray_over_local"] = (
            rate.get("ray, 2 actors") and rate["local, 2 workers"] and rate["ray, 2 actors"] / rate["local, 2 workers"]
        )
        out["two_threads_over_one"] = rate.get("local, 1 worker, 1 thread") and one / rate["local, 1 worker, 1 thread"]
    return out


def markdown_lines(section: dict) -> list[str]:
    """The section's table for results.md."""
    lines = ["## Dataset writing (`latent-onnx dataset`, webdataset)", ""]
    if "skipped" in section:
        return lines + [f"Skipped: {section['skipped']}.", ""]
    lines += [
        f"`{Path(section['bundle']).name}`, {section['per_class']} images per class, shards of "
        f"{section['shard_size']}, {section['cores']} cores for every run.",
        "",
        "| run | ONNX Runtime threads per worker | images/s (first shard to last) | images/s (whole call) |",
        "|---|---|---|---|",
    ]
    for name, run in section["runs"].items():
        steady = f"{run['images_per_s']:.1f}" if run["images_per_s"] else "-"
        lines.append(f"| {name} | {run['threads']} | {steady} | {run['images_per_s_wall']:.1f} |")
    ratios = [
        (key, label)
        for key, label in (
            ("two_workers_over_one", "2 local workers / 1"),
            ("ray_over_local", "Ray 2 actors / local 2 workers"),
            ("two_threads_over_one", "1 worker: all threads / 1 thread"),
        )
        if section.get(key)
    ]
    lines += ["", "; ".join(f"{label}: {section[key]:.2f}x" for key, label in ratios) + ".", ""] if ratios else [""]
    return lines
