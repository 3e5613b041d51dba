"""The Ray backend against a real local Ray cluster (`ray start --head`, 2 CPUs, loopback), stopped at the end.

Every run is a fresh `latent-onnx dataset` process, as users run it: a Ray driver does not survive being
initialised again in one process after another test (the bench's dataset section) started and shut down
a local Ray there (the actors of the second cluster were destroyed as they were created).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import pytest
from conftest import files_of

pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """host:port of a Ray head started for these tests; `ray stop` runs however the tests end. Token
    authentication is off for both ends (loopback only), whatever token ~/.ray holds."""
    ray = shutil.which("ray")
    port = _free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "disabled")
        # on a loaded machine a worker process can take over Ray's 60 s default to start and register, and
        # the raylet then kills it as dead; give it the time (the cluster is only these tests')
        env.setenv("RAY_worker_register_timeout_seconds", "600")
        try:
            subprocess.run(
                [
                    ray,
                    "start",
                    "--head",
                    "--node-ip-address",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--num-cpus",
                    "2",
                    "--num-gpus",
                    "0",
                    "--include-dashboard",
                    "false",
                    "--disable-usage-stats",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)


def run_dataset(*args) -> subprocess.CompletedProcess:
    """`latent-onnx dataset ARGS` in a new process; its exit code and output."""
    command = [sys.executable, "-m", "latent_onnx", "dataset", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def dataset(out, bundle, *args):
    done = run_dataset(out, "--bundle", bundle, "--per-class", 7, "--shard-size", 4, *args)
    assert done.returncode == 0, done.stderr
    return files_of(out)


def test_ray_writes_the_same_bytes_as_local_with_one_and_two_workers(bundle, tmp_path, ray_address):
    one = dataset(tmp_path / "local-1", bundle)
    two = dataset(tmp_path / "local-2", bundle, "--workers", "2")
    on_ray = dataset(tmp_path / "ray-2", bundle, "--backend", "ray", "--ray-address", ray_address, "--workers", "2")
    assert len([n for n in one if n.endswith(".png")]) == 21
    assert one == two == on_ray


def test_more_actors_than_the_cluster_has_cpus_is_one_line(bundle, tmp_path, ray_address):
    done = run_dataset(
        tmp_path / "ds",
        "--bundle",
        bundle,
        "--per-class",
        1,
        "--backend",
        "ray",
        "--ray-address",
        ray_address,
        "--workers",
        3,
    )
    assert done.returncode == 8 and "the Ray cluster has 2 CPUs" in done.stderr


def test_unreachable_ray_address_is_one_line(bundle, tmp_path):
    port = _free_port()  # nothing listens on it
    done = run_dataset(
        tmp_path / "ds", "--bundle", bundle, "--per-class", 1, "--backend", "ray", "--ray-address", f"127.0.0.1:{port}"
    )
    assert done.returncode == 8, done.stderr
    assert done.stderr.strip().startswith(f"latent-onnx: error: cannot reach the Ray cluster at 127.0.0.1:{port}")
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "ds").exists()
