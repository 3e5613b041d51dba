"""Serving speed: `latent-onnx serve` against the Python API called in the same process.

Both answer n = 1 requests at the bundle's default settings (a new seed each), from 1, 4 and 16
concurrent clients (threads) for a few seconds per point: over HTTP (httpx, keep-alive, Accept:
image/png) to the server in its own process, and as direct `generate` plus `png_bytes` calls (the
same work the server does per request, without HTTP, JSON parsing and the event loop). The server
runs its default worker threads (one per core) and one ONNX Runtime thread per graph; the direct
calls use a pipeline with one thread per graph too.

`python -m bench.serve` is the load test: N requests at concurrency C, the status counts, the latency
and the server's resident memory over the run.
"""

from __future__ import annotations

import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent
CONCURRENCIES = (1, 4, 16)


class ServerProcess:
    """`latent-onnx serve --port 0` in its own process: `url` once its /v1/health answers; stopped on exit."""

    def __init__(self, bundle: str | Path, *args: str, timeout_s: float = 60):
        self.command = [sys.executable, "-m", "latent_onnx", "serve", "--port", "0", "--bundle", str(bundle), *args]
        self.timeout_s = timeout_s
        self.url = ""

    def __enter__(self) -> ServerProcess:
        import httpx

        self._folder = tempfile.TemporaryDirectory()
        self.log = Path(self._folder.name) / "stderr.txt"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        with open(self.log, "w") as stderr:
            self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            found = re.search(r"serving (http://\S+?)/", self.log.read_text())
            if found:
                try:
                    if httpx.get(found.group(1) + "/v1/health", timeout=5).status_code == 200:
                        self.url = found.group(1)
                        return self
                except httpx.TransportError:
                    pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        output = self.log.read_text().strip()
        self.__exit__()
        raise RuntimeError(f"latent-onnx serve did not come up ({self.process.returncode}): {output}")

    def rss_mb(self) -> float:
        """The server's resident set now, MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._folder.cleanup()


@dataclass
class Drive:
    """The calls of one load run: each latency (s) and HTTP status, and the wall time."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    wall_s: float = 0.0

    def summary(self) -> dict:
        ordered = sorted(self.latencies)
        quantiles = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
        return {
            "requests": len(ordered),
            "requests_per_s": len(ordered) / self.wall_s,
            "p50_s": quantiles[49],
            "p99_s": quantiles[98],
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


def drive(
    make_sender: Callable[[], Callable[[int], int]],
    concurrency: int,
    *,
    seconds: float | None = None,
    requests: int | None = None,
) -> Drive:
    """Call senders (one per thread, made by make_sender; each call gets a request number and returns an HTTP
    status) from `concurrency` threads, for `seconds` or until `requests` calls were made in all."""
    numbers = itertools.count()
    lock = threading.Lock()
    out = Drive()
    started = time.perf_counter()
    deadline = started + seconds if seconds is not None else None

    def client():
        send = make_sender()
        while True:
            number = next(numbers)
            if (requests is not None and number >= requests) or (
                deadline is not None and time.perf_counter() > deadline
            ):
                return
            begun = time.perf_counter()
            status = send(number)
            with lock:
                out.latencies.append(time.perf_counter() - begun)
                out.statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.wall_s = time.perf_counter() - started
    return out


def http_sender(url: str, body: dict) -> Callable[[], Callable[[int], int]]:
    """Senders of `body` (with seed = the request number) to POST /v1/generate, asking for the PNG itself."""

    def make():
        import httpx

        client = httpx.Client(base_url=url, timeout=120, headers={"Accept": "image/png"})
        return lambda number: client.post("/v1/generate", json={**body, "seed": number}).status_code

    return make


def direct_sender(pipe, classes: str) -> Callable[[], Callable[[int], int]]:
    """Senders that do a request's work with the Python API: generate, then the PNG file as the server makes it."""
    from latent_onnx.images import png_bytes
    from latent_onnx.metadata import png_text

    def send(number: int) -> int:
        result = pipe.generate(classes=classes, n=1, seed=number)
        png_bytes(result.images[0], png_text(pipe.bundle, result, 0))
        return 200

    return lambda: send


def serve_section(bundle: str | Path, say, seconds: float = 2.0, concurrencies=CONCURRENCIES) -> dict:
    """Requests per second and p50 / p99 latency over HTTP and direct, at each concurrency ({"skipped": why}
    without the serve and test extras)."""
    import importlib.util

    from latent_onnx import Pipeline

    missing = [module for module in ("fastapi", "uvicorn", "httpx") if importlib.util.find_spec(module) is None]
    if missing:
        return {"skipped": f"needs {', '.join(missing)} (pip install '.[serve,test]')"}

    pipe = Pipeline.from_bundle(bundle, device="cpu", threads=1)
    classes = "0"  # the first class, by index (display names may repeat)
    rows = []
    with ServerProcess(bundle) as server:
        for clients in concurrencies:
            http = drive(http_sender(server.url, {"classes": classes, "n": 1}), clients, seconds=seconds).summary()
            direct = drive(direct_sender(pipe, classes), clients, seconds=seconds).summary()
            say(
                f"  {clients} client(s): HTTP {http['requests_per_s']:.1f} req/s (p50 {http['p50_s'] * 1e3:.1f} ms, "
                f"p99 {http['p99_s'] * 1e3:.1f} ms), direct {direct['requests_per_s']:.1f} req/s "
                f"(p50 {direct['p50_s'] * 1e3:.1f} ms, p99 {direct['p99_s'] * 1e3:.1f} ms)"
            )
            rows.append({"clients": clients, "http": http, "direct": direct})
        rss_mb = server.rss_mb()
    return {
        "bundle": pipe.bundle.name,
        "class": classes,
        "steps": pipe.sampler_config(condition="class").steps,
        "seconds_per_point": seconds,
        "server_rss_mb": rss_mb,
        "rows": rows,
    }


def markdown_lines(section: dict) -> list[str]:
    """The serve section of results.md."""
    if "skipped" in section:
        return ["## Serving (`latent-onnx serve`)", "", f"Skipped: {section['skipped']}.", ""]
    lines = [
        "## Serving (`latent-onnx serve`)",
        "",
        f"n = 1 requests on `{section['bundle']}` ({section['steps']} steps, class {section['class']}), "
        f"{section['seconds_per_point']:g} s per point; server RSS after the run {section['server_rss_mb']:.0f} MiB.",
        "",
        "| clients | HTTP req/s | HTTP p50 ms | HTTP p99 ms | direct req/s | direct p50 ms | direct p99 ms | HTTP / direct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in section["rows"]:
        http, direct = row["http"], row["direct"]
        lines.append(
            f"| {row['clients']} | {http['requests_per_s']:.1f} | {http['p50_s'] * 1e3:.1f} | {http['p99_s'] * 1e3:.1f} | "
            f"{direct['requests_per_s']:.1f} | {direct['p50_s'] * 1e3:.1f} | {direct['p99_s'] * 1e3:.1f} | "
            f"{http['requests_per_s'] / direct['requests_per_s']:.0%} |"
        )
    return lines + [""]


def load_test(server: ServerProcess, body: dict, requests: int, concurrency: int) -> dict:
    """`requests` calls at `concurrency` against a running server, with its RSS sampled through the run
    (after a warm-up of 2 x concurrency requests)."""
    drive(http_sender(server.url, body), concurrency, requests=2 * concurrency)
    samples = [server.rss_mb()]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            samples.append(server.rss_mb())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run = drive(http_sender(server.url, body), concurrency, requests=requests)
    finally:
        stop.set()
        sampler.join()
    samples.append(server.rss_mb())
    return {**run.summary(), "rss_after_warmup_mb": samples[0], "rss_max_mb": max(samples), "rss_end_mb": samples[-1]}


@click.command()
@click.option("--bundle", default=str(REPO / "onnx_models" / "fashion-colors"), show_default=True)
@click.option("--requests", type=click.IntRange(1), default=500, show_default=True)
@click.option("--concurrency", type=click.IntRange(1), default=16, show_default=True)
@click.option("--class", "classes", default="0", show_default=True, help="Class spec.")
def main(bundle, requests, concurrency, classes):
    """Load test: REQUESTS n = 1 requests at CONCURRENCY against a fresh `latent-onnx serve`."""
    from latent_onnx import load_bundle

    loaded = load_bundle(bundle)
    body = {"classes": classes, "n": 1}
    with ServerProcess(bundle) as server:
        result = load_test(server, body, requests, concurrency)
    click.echo(
        f"{result['requests']} requests at concurrency {concurrency} on {loaded.name}: statuses {result['statuses']}, "
        f"{result['requests_per_s']:.1f} req/s, p50 {result['p50_s'] * 1e3:.1f} ms, p99 {result['p99_s'] * 1e3:.1f} ms; "
        f"server RSS {result['rss_after_warmup_mb']:.1f} MiB after warm-up, max {result['rss_max_mb']:.1f}, "
        f"end {result['rss_end_mb']:.1f}"
    )


if __name__ == "__main__":
    main()
