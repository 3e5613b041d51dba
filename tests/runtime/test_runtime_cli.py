"""The `latent-onnx` command: outputs, reproducibility metadata, and one-line errors with nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_bundles import edit_manifest

from latent_onnx.images import PNG_TEXT_KEY

REPO_ROOT = Path(__file__).resolve().parents[2]


def _png_parameters(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text[PNG_TEXT_KEY])


def test_generate_writes_pngs_with_their_parameters(run, tiny_bundle_template):
    result = run(
        "generate",
        "--bundle",
        tiny_bundle_template,
        "--class",
        "sneaker",
        "-n",
        3,
        "--seed",
        11,
        "--steps",
        5,
        "--grid",
        "--save-trajectory",
        "chain.gif",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    files = [Path(s["file"]) for s in summary["samples"]]
    assert [f.name for f in files] == [f"sneaker-s11-000{i}.png" for i in range(3)]
    parameters = _png_parameters(files[2])
    assert parameters["seed"] == 11 and parameters["index"] == 2 and parameters["classes"] == "sneaker"
    assert parameters["sampler"]["steps"] == 5 and parameters["bundle"] == "tiny"
    with Image.open(files[2]) as image:
        assert "--start-index 2" in image.text["Comment"]
    assert Path(summary["grid"]).is_file()
    with Image.open("out/chain.gif") as gif:  # a bare file name goes beside the images
        assert gif.n_frames == 5 and gif.size[0] >= 128
    assert sorted(p.name for p in Path("out").iterdir()) == sorted(
        [f.name for f in files] + ["sneaker-s11-0000-grid.png", "chain.gif"]
    )

    again = run(
        "generate",
        "--bundle",
        tiny_bundle_template,
        "--class",
        "sneaker",
        "-n",
        1,
        "--seed",
        11,
        "--steps",
        5,
        "--start-index",
        2,
        "--out",
        "again",
    )
    assert again.exit_code == 0, again.output
    np.testing.assert_array_equal(
        np.asarray(Image.open("again/sneaker-s11-0002.png")), np.asarray(Image.open(files[2]))
    )


def test_existing_files_made_otherwise_are_kept_unless_overwrite_is_given(run, tiny_bundle_template):
    args = [
        "generate",
        "--bundle",
        tiny_bundle_template,
        "--caption",
        "a red sneaker",
        "-n",
        1,
        "--seed",
        1,
        "--steps",
        2,
    ]
    assert run(*args).exit_code == 0
    target = Path("out/a-red-sneaker-s1-0000.png")
    before = target.stat().st_mtime_ns
    same = run(*args)  # the same parameters: the file is the one it would make, so it is kept
    assert same.exit_code == 0 and "kept 1 already there" in same.stdout and target.stat().st_mtime_ns == before
    refused = run(*args, "--eps1", 0.01)
    assert (
        refused.exit_code == 5 and "already exists with other generation parameters; pass --overwrite" in refused.stderr
    )
    assert target.stat().st_mtime_ns == before
    assert run(*args, "--eps1", 0.01, "--overwrite").exit_code == 0
    assert target.stat().st_mtime_ns != before
    assert [p.name for p in Path("out").iterdir()] == [target.name]  # no temporary files left behind


def test_classes_and_info(run, tiny_bundle_template):
    listed = run("classes", "--bundle", tiny_bundle_template)
    assert listed.exit_code == 0 and listed.stdout.splitlines() == ["0\tsneaker", "1\tsandal", "2\tankle boot, boot"]
    assert run("classes", "--bundle", tiny_bundle_template, "--search", "BOO").stdout == "2\tankle boot, boot\n"
    info = run("info", tiny_bundle_template, "--json")
    assert info.exit_code == 0, info.output
    described = json.loads(info.stdout)
    assert described["latent_dim"] == 6 and described["classes"] == 3 and described["graphs"]["encoder"]["checked"]
    assert "tiny test bundle" in run("info", tiny_bundle_template).stdout


def _damage(bundle: Path, how: str):
    if how == "tampered":
        path = bundle / "class_grad.onnx"
        path.write_bytes(path.read_bytes()[:-1] + b"\0")
    elif how == "truncated":
        path = bundle / "generator.onnx"
        path.write_bytes(path.read_bytes()[:100])
    elif how == "missing":
        (bundle / "classes.txt").unlink()
    elif how == "outside":
        edit_manifest(bundle, lambda m: m["graphs"]["generator"].update(file="../generator.onnx"))


BAD_INPUTS = [
    (["--class", "snekaer"], "unknown class 'snekaer'; did you mean 'sneaker'", None),
    (["--caption", "a green sneaker"], "not in the bundle's vocabulary: green", None),
    (["--class", "sneaker", "--eps1", "nan"], "eps1 must be a finite number > 0", None),
    (["--class", "sneaker", "--eps2", "-1"], "eps2 must be a finite number >= 0", None),
    (["--class", "sneaker", "--steps", "-1"], "steps must be an integer", None),
    (["--class", "sneaker", "--steps", "many"], "'many' is not a valid integer", None),
    (["--class", "sneaker", "-n", "0"], "n must be an integer from 1", None),
    (["--class", "sneaker", "--eps1", "1e30"], "diverged", None),
    (["--class", "sneaker", "--then", "bag"], "unknown class 'bag'", None),
    (["--class", "sneaker", "--sampler", "mala", "--eps2", "0"], "mala sampler needs noise", None),
    (["--class", "sneaker", "--batch-size", "0"], "batch size must be", None),
    (
        ["--class", "sneaker", "--caption", "a red sneaker"],
        "exactly one of a class (--class) or a caption (--caption)",
        None,
    ),
    (["--class", "sneaker", "--device", "cuda"], "no CUDA provider", None),
    (["--class", "sneaker", "--out", "afile/sub"], "afile is not a folder", None),
    (["--class", "sneaker", "--out", "/proc/latent-onnx-out"], "/proc is not writable", None),  # even for root
    (["--class", "sneaker", "--preset", "turbo"], "unknown preset 'turbo'", None),
    (["--class", "sneaker"], "does not match its sha256", "tampered"),
    (["--class", "sneaker"], "does not match its sha256", "truncated"),
    (["--class", "sneaker"], "'classes.txt' (classes.file) is missing", "missing"),
    (["--class", "sneaker"], "not a plain relative path inside the bundle", "outside"),
]


@pytest.mark.parametrize("args, message, damage", BAD_INPUTS)
def test_bad_input_is_one_line_a_nonzero_exit_and_nothing_written(run, tiny_bundle, args, message, damage):
    if "cuda" in args:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            pytest.skip("this onnxruntime has CUDA")
    if damage:
        _damage(tiny_bundle, damage)
    Path("afile").write_text("not a folder")
    before = sorted(p.name for p in Path(".").iterdir())
    result = run("generate", "--bundle", tiny_bundle, "--steps", 2, *args)
    assert result.exit_code not in (0, 1), result.output  # 1 would be an unhandled exception
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("latent-onnx: error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert sorted(p.name for p in Path(".").iterdir()) == before


def test_missing_default_bundle_says_how_to_pass_one(run, monkeypatch):
    monkeypatch.setenv("LATENT_ONNX_BUNDLE", "not-shipped")
    result = run("generate", "--class", "sneaker")
    assert result.exit_code == 3 and "pass --bundle PATH" in result.stderr and len(result.stderr.splitlines()) == 1


def test_the_runtime_never_imports_torch_or_onnx(tmp_path, tiny_bundle_template):
    script = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['onnx'] = None  # any import of them now fails\n"
        "from latent_onnx.cli import main\n"
        f"main(['generate', '--bundle', {str(tiny_bundle_template)!r}, '--class', 'sandal', '-n', '2', '--steps', '3', '--seed', '0'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").glob("sandal-s0-*.png"))) == 2


def test_bare_command_shows_help_and_help_exits_zero(run):
    bare = run()
    assert bare.exit_code == 2 and "Commands:" in bare.stderr and "generate" in bare.stderr
    helped = run("generate", "--help")
    assert helped.exit_code == 0 and "--save-trajectory" in helped.stdout


def test_a_runtime_warning_is_one_line_of_the_command(run, tiny_bundle_template, monkeypatch):
    """What the runtime logs (e.g. the CUDA fallback) reads like the command's other lines."""
    from latent_onnx import sessions

    create = sessions.SessionFactory.create

    def create_and_warn(self, bundle, role):
        sessions._log.warning("a notice from the runtime")
        sessions._log.warning("a notice\nover two lines \x1b[31m")
        try:
            raise ValueError("the cause")
        except ValueError:
            sessions._log.exception("an error the runtime survived")
        return create(self, bundle, role)

    monkeypatch.setattr(sessions.SessionFactory, "create", create_and_warn)
    result = run("generate", "--bundle", tiny_bundle_template, "--class", "sneaker", "-n", 1, "--steps", 2)
    assert result.exit_code == 0, result.output
    notices = [line for line in result.stderr.splitlines() if "a notice from the runtime" in line]
    assert notices and set(notices) == {"latent-onnx: warning: a notice from the runtime"}, result.stderr
    assert "latent-onnx: warning: a notice over two lines \\x1b[31m\n" in result.stderr  # one printable line
    # a logged exception keeps its traceback (the server logs its internal errors so)
    assert "latent-onnx: error: an error the runtime survived\nTraceback" in result.stderr
    assert "ValueError: the cause" in result.stderr
