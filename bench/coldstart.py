"""Cold start and peak memory of `latent-onnx generate`, run as a user runs it: a fresh process.

Cold start is the wall time from launching the process to the first image file being written
(its modification time), and to the process exiting. Peak memory is the process's own high-water
resident set (VmHWM, written at exit by a two-line wrapper around `python -m latent_onnx`): the
rusage maximum of a child would also count the benchmark's pages it was forked from.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Runs `python -m latent_onnx ARGS...` and writes the process's peak RSS in kB to the file argv[1] at exit.
_WRAPPER = """
import atexit, resource, runpy, sys
report = sys.argv[1]
def peak():
    try:
        with open("/proc/self/status") as status:
            kilobytes = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    except OSError:  # no /proc: the rusage maximum (may include pages from before exec)
        kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(report, "w") as out:
        out.write(str(kilobytes))
atexit.register(peak)
sys.argv = ["latent-onnx", *sys.argv[2:]]
runpy.run_module("latent_onnx", run_name="__main__", alter_sys=True)
"""


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


def cold_start(
    bundle: str, classes: str, steps: int, threads: int | None = None, repo_root: Path | None = None
) -> ColdStart:
    """Run `latent-onnx generate -n 1` on `bundle` in a fresh Python process and measure it.

    Raises RuntimeError with the command's stderr when it fails.
    """
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        peak_file = Path(folder) / "peak_kb.txt"
        command = [
            sys.executable,
            "-c",
            _WRAPPER,
            str(peak_file),
            "generate",
            "--bundle",
            str(bundle),
            "--class",
            classes,
            "-n",
            "1",
            "--seed",
            "0",
            "--steps",
            str(steps),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
        if threads is not None:
            command += ["--threads", str(threads)]
        # as installed: pip compiles the package's bytecode, so a start must not recompile it (the first
        # run of a source checkout writes it; the figure is the best of several runs)
        env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        if repo_root is not None:  # a source checkout: make `latent_onnx` importable in the child
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
        started_wall = time.time()
        started = time.perf_counter()
        with open(Path(folder) / "stderr.txt", "w+") as stderr:
            process = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env, check=False)
            exit_s = time.perf_counter() - started
            if process.returncode != 0:
                stderr.seek(0)
                raise RuntimeError(f"latent-onnx generate failed ({process.returncode}): {stderr.read().strip()}")
        images = sorted(out.glob("*.png"))
        first_image_s = min(image.stat().st_mtime for image in images) - started_wall
        return ColdStart(str(bundle), steps, first_image_s, exit_s, int(peak_file.read_text()) / 1024)
