"""Time SGLD steps through the runtime (`latent_onnx.Pipeline`), as a user's `generate` runs them.

A step is what `Pipeline.generate` does per step: the gradient graph, the prior gradient, the
per-sample noise draw and the update. It is read from the timestamps of generate's per-step
callback (the gap between two callbacks is exactly one step), so one short run gives every step
and nothing else (start, final evaluation, decoding) leaks in.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from latent_onnx import Pipeline
from latent_onnx.pipeline import PATH_ROLES

from .machine import best_seconds


@dataclass
class PathTiming:
    """One path (latent or composite) at one batch size, through the runtime."""

    path: str  # "latent" (class_grad) or "composite" (composite_class_grad)
    batch: int  # chains run together
    steps_timed: int  # step intervals measured
    step_s: float  # median seconds per SGLD step for the whole batch
    graph_s: float  # best seconds of the gradient graph alone on the batch
    decode_s: float  # best seconds of the generator on the batch
    image_s: float  # seconds per finished image: (default steps x step_s + decode_s) / batch
    generate_s: float | None = None  # latent paths: wall seconds of one whole Pipeline.generate of `batch` images
    # at the bundle's default steps (start, every step, decode), as a user calls it; composite: not run (slow)

    def to_dict(self) -> dict:
        return asdict(self)


def step_seconds(pipe: Pipeline, classes: str, path: str, batch: int, steps: int) -> list[float]:
    """Seconds of each SGLD step after the first, from one generate run of `steps` + 1 steps at `batch` chains."""
    stamps: list[float] = []
    pipe.generate(
        classes=classes,
        path=path,
        n=batch,
        batch_size=batch,
        seed=0,
        steps=steps + 1,
        callback=lambda step, total, z: stamps.append(time.perf_counter()),
    )
    return list(np.diff(stamps))


def start_codes(pipe: Pipeline, batch: int) -> np.ndarray:
    """float32 [batch, D]: draws of the bundle's init (generator seeded 0), clipped to the bundle's clip."""
    rng = np.random.default_rng(0)
    z = np.stack([pipe.bundle.init.sample(rng) for _ in range(batch)])
    return z if pipe.bundle.clip is None else np.clip(z, *pipe.bundle.clip)


def batch_weights(pipe: Pipeline, classes: str, batch: int) -> np.ndarray:
    """float32 [batch, K]: the class spec's weights, one row per chain (a gradient graph's `weights` feed)."""
    row = pipe.class_weights(classes)
    return np.broadcast_to(row, (batch, len(row))).copy()


def time_path(pipe: Pipeline, classes: str, path: str, batch: int, steps: int, repeats: int = 3) -> PathTiming:
    """Step, graph-only and decode time of `path` at `batch`: the best of `repeats` (step: of the median
    step of `repeats` generate runs of `steps` timed step intervals, >= 1)."""
    role = PATH_ROLES[path]
    z, weights = start_codes(pipe, batch), batch_weights(pipe, classes, batch)
    runner = pipe.runner(role)
    graph = best_seconds(lambda: runner.run(z=z, weights=weights), repeats)
    decode = best_seconds(lambda: pipe.decode(z), max(1, repeats // 2))
    step = min(statistics.median(step_seconds(pipe, classes, path, batch, steps)) for _ in range(repeats))
    default_steps = pipe.sampler_config(condition="class").steps
    generate = None
    if path == "latent":
        generate = best_seconds(lambda: pipe.generate(classes=classes, path=path, n=batch, batch_size=batch, seed=0), 1)
    return PathTiming(path, batch, steps, step, graph, decode, (default_steps * step + decode) / batch, generate)
