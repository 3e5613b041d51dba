"""The Ray backend of `latent-onnx dataset`: one actor per worker on an existing (or a new local) Ray
cluster, each with its own ONNX Runtime sessions (a session cannot be pickled). Needs the `ray` extra:
`pip install 'latent-onnx[ray]'`; imported only when `--backend ray` is asked for.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from .dataset import Plan, RunOptions, Sample, Shard, ShardMaker, WorkerDied, WorkerError
from .errors import InputError, LatentOnnxError

CONNECT_TIMEOUT_S = 5.0


def check_ray(address: str | None) -> None:
    """InputError without Ray installed; WorkerError when `address` ("host:port") does not answer."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InputError("the ray backend needs Ray: pip install 'latent-onnx[ray]'") from None
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(
            f"--ray-address must be host:port (the head node's GCS port, 6379 by default), not {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise WorkerError(
            f"cannot reach the Ray cluster at {address}: {error.strerror or error}; start it with "
            f"`ray start --head` or check the address"
        ) from None


class RayWorkers:
    """One ShardMaker actor per worker; each reserves as many CPUs as it runs ONNX Runtime threads."""

    def __init__(self, plan: Plan, run: RunOptions):
        import ray

        self.ray = ray
        extra = {} if run.ray_address else {"include_dashboard": False}
        try:
            ray.init(address=run.ray_address, logging_level=logging.ERROR, **extra)
        except (ConnectionError, RuntimeError) as error:
            raise WorkerError(
                f"cannot connect to the Ray cluster at {run.ray_address or 'a new local one'}: "
                f"{' '.join(str(error).split())[:200]} (a cluster with token authentication needs "
                f"RAY_AUTH_MODE=token and its token)"
            ) from None
        cpus = int(ray.cluster_resources().get("CPU", 0))
        self.threads = run.threads or max(1, cpus // run.workers)
        if run.workers * self.threads > cpus:
            ray.shutdown()
            raise WorkerError(
                f"the Ray cluster has {cpus} CPUs, too few for {run.workers} actors of {self.threads} "
                f"thread(s); use fewer --workers or --threads"
            )
        self.actor_class = ray.remote(ShardMaker).options(num_cpus=self.threads)
        self.args = (plan, self.threads, run.device, run.batch_size)
        self.actors = [self.actor_class.remote(*self.args) for _ in range(run.workers)]
        self.running: dict = {}  # ObjectRef -> slot

    def submit(self, slot: int, shard: Shard) -> None:
        self.running[self.actors[slot].make.remote(shard)] = slot

    def next_done(self) -> tuple[int, Callable[[], list[Sample]]]:
        """(slot, a call that returns the samples or raises WorkerDied) of a finished shard."""
        ray = self.ray
        (ref,), _ = ray.wait(list(self.running), num_returns=1)
        slot = self.running.pop(ref)

        def result() -> list[Sample]:
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError as error:
                raise WorkerDied(f"Ray actor {slot} died: {' '.join(str(error).split())[:160]}") from None
            except ray.exceptions.RayTaskError as error:
                if isinstance(error.cause, LatentOnnxError):
                    raise error.cause from None
                raise WorkerError(f"a Ray actor failed: {' '.join(str(error.cause).split())[:200]}") from None

        return slot, result

    def restart(self, slot: int) -> None:
        self.ray.kill(self.actors[slot])
        self.actors[slot] = self.actor_class.remote(*self.args)

    def close(self, finished: bool) -> None:
        """Kill the actors (finished or not: their results are in) and disconnect."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.ray.shutdown()
