"""A plain (non-editable) build carries the shipped bundles, the installed command finds its default, and
the README's install commands give exactly one ONNX Runtime build in fresh virtual environments."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import latent_onnx

REPO_ROOT = Path(__file__).resolve().parents[2]
NO_GPU = shutil.which("nvidia-smi") is None  # then --device cuda must fail, in one line

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("setuptools") is None, reason="building a wheel offline needs setuptools"
    ),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, tiny_bundle_template) -> Path:
    """latent_onnx-*.whl built offline from this checkout, with the tiny bundle as the shipped default."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (REPO_ROOT / name).exists():
            shutil.copy(REPO_ROOT / name, source / name)
    if not (source / "README.md").exists():
        (source / "README.md").write_text("latent-onnx\n")
    for package in ("latent_onnx", "export_tools"):
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tiny_bundle_template, source / "onnx_models" / "fashion-colors")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")]
        + [str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (built,) = (tmp_path / "dist").glob("latent_onnx-*.whl")
    return built


def test_wheel_carries_shipped_bundles_and_the_command_finds_the_default(tmp_path, wheel):
    assert wheel.name.startswith(f"latent_onnx-{latent_onnx.__version__}-")  # the version is kept in one place
    with zipfile.ZipFile(wheel) as archive:
        assert "latent_onnx/models/fashion-colors/manifest.json" in archive.namelist()
        archive.extractall(tmp_path / "installed")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "LATENT_ONNX_BUNDLE"}
    env["PYTHONPATH"] = str(tmp_path / "installed")
    done = subprocess.run(
        [sys.executable, "-c", "from latent_onnx.cli import main; main()"]
        + ["generate", "--class", "sneaker", "-n", "1", "--seed", "0"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (work / "out" / "sneaker-s0-0000.png").is_file()


# -- the README's install commands, in fresh virtual environments (PyPI) --------------------------


def readme_command(pattern: str) -> str:
    """The one line of a bash block in the README that matches `pattern` (a regular expression)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)
    (line,) = [line for block in blocks for line in block.splitlines() if re.search(pattern, line)]
    return line


class Venv:
    """A fresh virtual environment (no system packages) in `root`, and the commands run inside it."""

    def __init__(self, root: Path):
        venv.create(root, with_pip=True, clear=True)
        self.root = root
        self.env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "LATENT_ONNX_BUNDLE")}
        self.env.update(VIRTUAL_ENV=str(root), PATH=f"{root / 'bin'}:{os.environ.get('PATH', '')}")

    def run(self, command: str, timeout: int = 900) -> subprocess.CompletedProcess:
        """Run a bash command line with this venv's bin first on PATH (so python3 and pip are its own)."""
        return subprocess.run(
            ["bash", "-c", command], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def run_ok(self, command: str) -> subprocess.CompletedProcess:
        """`run`, asserting that the command succeeded (the tail of its stderr otherwise)."""
        done = self.run(command)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    def expect_one_line_device_error(self, out: str) -> str:
        """`latent-onnx generate --device cuda` fails with exit 4, one line and no output folder; its stderr."""
        done = self.run(f"latent-onnx generate --class sneaker -n 1 --device cuda --out {out}")
        assert done.returncode == 4 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not (self.root / out).exists()
        return done.stderr

    def onnx_runtime_builds(self) -> list[str]:
        listed = self.run_ok("python3 -m pip list --format freeze")
        names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
        return sorted(names & {"onnxruntime", "onnxruntime-gpu"})


def installable(command: str, wheel: Path) -> str:
    """A README install command with the checkout '.' replaced by the built wheel."""
    assert "'.[" in command, command
    return command.replace("'.[", f"'{wheel}[")


def test_the_readme_cpu_install_then_its_cuda_switch_leave_one_onnx_runtime_build(tmp_path, wheel):
    env = Venv(tmp_path / "venv")
    cpu_install = readme_command(r"pip install '\.\[cpu\]' && latent-onnx generate").split(" && latent-onnx")[0]
    env.run_ok(installable(cpu_install, wheel))
    assert env.onnx_runtime_builds() == ["onnxruntime"]

    # installing the other extra on top, without the README's uninstall, leaves both: the runtime says so
    env.run_ok(f"python3 -m pip install -q '{wheel}[gpu]'")
    assert env.onnx_runtime_builds() == ["onnxruntime", "onnxruntime-gpu"]
    if NO_GPU:
        assert "both onnxruntime and onnxruntime-gpu are installed" in env.expect_one_line_device_error("out-both")

    env.run_ok(installable(readme_command(r"pip uninstall -y onnxruntime onnxruntime-gpu"), wheel))
    assert env.onnx_runtime_builds() == ["onnxruntime-gpu"]
    check_cuda_build(env)


def test_a_fresh_gpu_install_has_only_the_cuda_build_and_runs_on_cpu(tmp_path, wheel):
    env = Venv(tmp_path / "venv")
    env.run_ok(installable(readme_command(r"pip uninstall -y onnxruntime onnxruntime-gpu"), wheel))
    assert env.onnx_runtime_builds() == ["onnxruntime-gpu"]
    check_cuda_build(env)


def check_cuda_build(env: Venv) -> None:
    """The CUDA build is the one module, makes images on the CPU, and, with no usable GPU, --device cuda is one line."""
    providers = env.run("python3 -c 'import onnxruntime; print(onnxruntime.get_available_providers())'")
    assert "CUDAExecutionProvider" in providers.stdout, providers.stderr
    env.run_ok("latent-onnx generate --class sneaker -n 1 --seed 0 --device cpu --out out-cpu")
    assert (env.root / "out-cpu" / "sneaker-s0-0000.png").is_file()
    if NO_GPU:
        env.expect_one_line_device_error("out-cuda")
        # --device auto (the default) falls back to the CPU, and says so in one line
        auto = env.run_ok("latent-onnx generate --class sneaker -n 1 --seed 0 --out out-auto")
        assert (env.root / "out-auto" / "sneaker-s0-0000.png").is_file()
        notices = [line for line in auto.stderr.splitlines() if "CUDA" in line]
        assert len(notices) == 1 and "running on the CPU" in notices[0], auto.stderr
        assert notices[0].startswith("latent-onnx: warning: CUDA's provider failed to start"), auto.stderr
