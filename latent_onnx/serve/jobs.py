"""Generation jobs of the server: a bounded pool of worker threads, progress events and cancellation.

A job runs `Pipeline.iter_batches` in a worker thread. Its step callback raises `_Cancelled` once the
job is cancelled (its client went away), which ends its chains at the next step.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from ..images import make_grid, png_bytes
from ..metadata import png_text
from ..pipeline import GenerateOptions, GenerationResult, Pipeline


class _Cancelled(Exception):
    """Raised inside a job's step callback once its client has gone."""


class Busy(Exception):
    """Every job slot is taken."""


@dataclass
class Finished:
    """A finished job: the result and each sample's PNG file, exactly as the CLI writes it."""

    result: GenerationResult
    pngs: list[bytes]
    texts: list[dict[str, str]]


class JobPool:
    """At most `workers` jobs run at once and at most `capacity` run or wait; `submit` refuses more (Busy)."""

    def __init__(self, workers: int, capacity: int):
        self.workers, self.capacity = workers, capacity
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="latent-onnx-job")
        self._lock = threading.Lock()
        self._jobs: set[Job] = set()  # running or waiting

    def submit(
        self,
        pipe: Pipeline,
        options: GenerateOptions,
        progress: Callable[[dict], None] | None = None,
        preview_every: int = 0,
    ) -> Job:
        """Start a job (Busy when every slot is taken); `progress` gets events on the event loop's thread."""
        with self._lock:
            if len(self._jobs) >= self.capacity:
                raise Busy(f"the server is busy ({len(self._jobs)} jobs running or waiting); retry later")
            job = Job(pipe, options, asyncio.get_running_loop(), progress, preview_every)
            self._jobs.add(job)
        try:
            future = self._executor.submit(job.work)
        except BaseException:
            self._release(job)
            raise
        future.add_done_callback(lambda _: self._release(job))
        job.done = asyncio.wrap_future(future)
        job.done.add_done_callback(lambda done: done.cancelled() or done.exception())  # a left job's error is not news
        return job

    @property
    def active(self) -> int:
        """Jobs running or waiting."""
        return len(self._jobs)

    def _release(self, job: Job) -> None:
        with self._lock:
            self._jobs.discard(job)

    def shutdown(self) -> None:
        """Cancel every job and wait for the workers to stop."""
        with self._lock:
            for job in self._jobs:
                job.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)


class Job:
    """One generate request running in a worker thread; `done` resolves to a Finished (or raises)."""

    done: asyncio.Future

    def __init__(
        self,
        pipe: Pipeline,
        options: GenerateOptions,
        loop: asyncio.AbstractEventLoop,
        progress: Callable[[dict], None] | None,
        preview_every: int,
    ):
        self.pipe, self.options, self.loop = pipe, options, loop
        self.progress, self.preview_every = progress, preview_every
        self.ready = loop.create_future()  # True once every check has passed, False when the job failed first
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop the chains at their next step (or before they start)."""
        self._cancelled.set()

    def work(self) -> Finished:
        try:
            if self._cancelled.is_set():
                raise _Cancelled()
            batches = self.pipe.iter_batches(replace(self.options, callback=self._step))
            self._resolve_ready(True)
            result = GenerationResult.concatenate(list(batches))
        except BaseException:
            self._resolve_ready(False)
            raise
        texts = [png_text(self.pipe.bundle, result, row) for row in range(len(result.images))]
        return Finished(result, [png_bytes(image, text) for image, text in zip(result.images, texts)], texts)

    def _resolve_ready(self, passed: bool) -> None:
        self.loop.call_soon_threadsafe(lambda: self.ready.done() or self.ready.set_result(passed))

    def _step(self, step: int, total: int, z: np.ndarray) -> None:
        if self._cancelled.is_set():
            raise _Cancelled()
        if self.progress is None or not (step % self.preview_every == 0 or step == total):
            return
        preview = base64.b64encode(png_bytes(make_grid(self.pipe.decode(z)), {})).decode("ascii")
        event = {"step": step, "total": total, "preview": preview}
        self.loop.call_soon_threadsafe(self.progress, event)
