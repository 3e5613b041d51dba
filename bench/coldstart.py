"""Cold start and peak memory of `latent-onnx generate`, run as a user runs it: a fresh process.

Cold start is the wall time from launching the process to the first image file being written
(its modification time), and to the process exiting; peak memory is the child's maximum resident
set size as the kernel reports it (os.wait4).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class ColdStart:
    """One `latent-onnx generate` process."""

    bundle: str  # bundle path or name given to --bundle
    steps: int  # SGLD steps run
    first_image_s: float  # launch -> first PNG written
    exit_s: float  # launch -> process exit
    peak_rss_mb: float  # maximum resident set size of the process, MiB

    def to_dict(self) -> dict:
        return asdict(self)


def cold_start(bundle: str, classes: str, steps: int, threads: int | None = None,
               repo_root: Path | None = None) -> ColdStart:
    """Run `python -m latent_onnx generate -n 1` on `bundle` in a fresh process and measure it.

    Raises RuntimeError with the command's stderr when it fails.
    """
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        command = [sys.executable, "-m", "latent_onnx", "generate", "--bundle", str(bundle), "--class", classes,
                   "-n", "1", "--seed", "0", "--steps", str(steps), "--out", str(out), "--device", "cpu"]
        if threads is not None:
            command += ["--threads", str(threads)]
        env = dict(os.environ)
        if repo_root is not None:  # a source checkout: make `latent_onnx` importable in the child
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
        started_wall = time.time()
        started = time.perf_counter()
        with open(Path(folder) / "stderr.txt", "w+") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
            _, status, usage = os.wait4(process.pid, 0)
            exit_s = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                stderr.seek(0)
                raise RuntimeError(f"latent-onnx generate failed ({process.returncode}): {stderr.read().strip()}")
        images = sorted(out.glob("*.png"))
        first_image_s = min(image.stat().st_mtime for image in images) - started_wall
        return ColdStart(str(bundle), steps, first_image_s, exit_s, usage.ru_maxrss / 1024)
