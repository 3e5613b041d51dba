"""What `generate` writes: resumable runs (kill, full disk), the reproduce command of every kind of PNG,
batch-size independence, upscaling, the grid, the trajectory, and which files may be replaced."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from runtime_bundles import D, edit_manifest, sha256_file, use_mixture_prior

from latent_onnx import Pipeline
from latent_onnx.cli import cli
from latent_onnx.images import GUTTER_GREY, PNG_TEXT_KEY

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _text(path) -> dict:
    with Image.open(path) as image:
        return dict(image.text)


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"bare {name} in JSON output")

    return json.loads(text, parse_constant=refuse)


def _reproduce(png: Path, out: Path, env_bundle=None):
    """Run the PNG's own Comment command through the click CLI in another working folder; its new file."""
    words = shlex.split(_text(png)["Comment"])
    assert words[:2] == ["latent-onnx", "generate"]
    elsewhere = out / "elsewhere"
    elsewhere.mkdir(parents=True)
    previous = os.getcwd()
    os.chdir(elsewhere)
    try:
        result = CliRunner().invoke(
            cli, words[1:] + ["--out", "again", "--json"], env={"LATENT_ONNX_BUNDLE": env_bundle}
        )
    finally:
        os.chdir(previous)
    assert result.exit_code == 0, result.output
    (sample,) = json.loads(result.stdout)["samples"]
    return elsewhere / sample["file"]


KINDS = {
    "class": ["--class", "sneaker"],
    "mix with a negative weight": ["--class", "sneaker:1,sandal:-0.5"],
    "caption": ["--caption", "a red sneaker"],
    "then switch": ["--class", "sneaker", "--then", "sandal"],
    "init image": ["--class", "sandal", "--init-image", "init.png"],
    "preset": ["--class", "boot", "--preset", "paper"],
    "mala": ["--class", "sneaker", "--sampler", "mala", "--eps2", "0.02"],
    "upscaled lanczos": ["--caption", "a blue sandal", "--upscale", "3", "--resample", "lanczos"],
    "bundle from the environment": ["--class", "sandal"],
    "bundle by a relative path": ["--class", "sneaker"],
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_png_carries_the_command_that_regenerates_its_pixels(
    run, tiny_bundle_template, tmp_path, monkeypatch, kind
):
    Image.new("RGB", (9, 7), (200, 40, 90)).save("init.png")
    bundle_args = ["--bundle", tiny_bundle_template]
    if kind == "bundle from the environment":
        monkeypatch.setenv("LATENT_ONNX_BUNDLE", str(tiny_bundle_template))
        bundle_args = []
    elif kind == "bundle by a relative path":
        shutil.copytree(tiny_bundle_template, "bundles/tiny")
        bundle_args = ["--bundle", "bundles/tiny"]
    result = run("generate", *bundle_args, *KINDS[kind], "-n", 2, "--seed", 5, "--steps", 6, "--json")
    assert result.exit_code == 0, result.output
    second = Path(_strict_json(result.stdout)["samples"][1]["file"])
    monkeypatch.delenv("LATENT_ONNX_BUNDLE", raising=False)  # the command names its bundle itself
    again = _reproduce(second, tmp_path, env_bundle=None)
    np.testing.assert_array_equal(_pixels(again), _pixels(second))
    stored = json.loads(_text(second)[PNG_TEXT_KEY])
    assert {k: v for k, v in json.loads(_text(again)[PNG_TEXT_KEY]).items() if k != "logp"} == {
        k: v for k, v in stored.items() if k != "logp"
    }
    if kind == "init image":
        assert stored["sampler"]["start"] == "image" and stored["init_image_sha256"] == sha256_file(Path("init.png"))


def test_an_init_image_run_records_the_start_it_used(run, tiny_bundle, tmp_path):
    means = np.random.default_rng(1).normal(0, 1, (3, D))
    use_mixture_prior(tiny_bundle, np.full(3, 1 / 3), means, np.stack([np.eye(D)] * 3))
    edit_manifest(tiny_bundle, lambda m: m["sampler"].update(start="conditioned"))
    Image.new("RGB", (4, 4), (10, 200, 30)).save("init.png")
    done = run(
        "generate",
        "--bundle",
        tiny_bundle,
        "--class",
        "sandal",
        "--init-image",
        "init.png",
        "-n",
        1,
        "--seed",
        2,
        "--json",
    )
    assert done.exit_code == 0, done.output
    png = Path(_strict_json(done.stdout)["samples"][0]["file"])
    assert json.loads(_text(png)[PNG_TEXT_KEY])["sampler"]["start"] == "image"
    assert "--start image" in _text(png)["Comment"] and "--start conditioned" not in _text(png)["Comment"]
    np.testing.assert_array_equal(_pixels(_reproduce(png, tmp_path)), _pixels(png))
    refused = run(
        "generate", "--bundle", tiny_bundle, "--class", "sandal", "--init-image", "init.png", "--start", "conditioned"
    )
    assert refused.exit_code == 2 and "an init image sets the start" in refused.stderr
    alone = run("generate", "--bundle", tiny_bundle, "--class", "sandal", "--start", "image")
    assert alone.exit_code == 2 and "start 'image' needs an init image" in alone.stderr


@pytest.mark.parametrize("prior", ["gaussian", "mixture"])
def test_pixels_and_codes_do_not_depend_on_the_batch_size(tiny_bundle, prior):
    if prior == "mixture":
        means = np.random.default_rng(4).normal(0, 1, (5, D))
        tril = np.stack([np.tril(np.random.default_rng(m).normal(0, 0.1, (D, D)), -1) + np.eye(D) for m in range(5)])
        use_mixture_prior(tiny_bundle, np.full(5, 0.2), means, tril)
    pipe = Pipeline.from_bundle(tiny_bundle, device="cpu")
    for method in ("sgld", "mala"):
        runs = [
            pipe.generate(classes="sandal", n=64, seed=9, steps=30, batch_size=b, method=method) for b in (1, 16, 64)
        ]
        for other in runs[1:]:
            np.testing.assert_array_equal(other.z, runs[0].z)  # bit for bit
            np.testing.assert_array_equal(other.pixels, runs[0].pixels)


def _generate_command(bundle, out, *extra, steps=400):
    return [
        "generate",
        "--bundle",
        str(bundle),
        "--class",
        "sandal",
        "-n",
        "12",
        "--seed",
        "3",
        "--steps",
        str(steps),
        "--batch-size",
        "1",
        "--out",
        str(out),
        "--upscale",
        "4",
        *map(str, extra),
    ]


def _subprocess(args, cwd, preexec=None, **popen):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", "from latent_onnx.cli import main; main()", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
        **popen,
    )


def _written_names(line: str) -> list[str]:
    """The file names a stop message lists ("a.png .. c.png, e.png")."""
    listed = re.search(r"image\(s\) to [^;]*?/: ([^;]*)", line).group(1)
    names = []
    for part in listed.split(", "):
        first, _, last = part.partition(" .. ")
        lo, hi = int(first[-8:-4]), int((last or first)[-8:-4])
        names += [f"{first[:-8]}{i:04d}.png" for i in range(lo, hi + 1)]
    return names


def _check_resumed(run, command, out: Path, reference: Path, kept_names: list[str]):
    """The same command again keeps the files there (untouched) and makes exactly the rest, as the uninterrupted run."""
    mtimes = {name: (out / name).stat().st_mtime_ns for name in kept_names}
    again = run(*command, "--batch-size", 16)  # a different batch size: the same samples
    assert again.exit_code == 0, again.output
    assert (
        f"wrote {12 - len(kept_names)} image(s)" in again.stdout
        and f"kept {len(kept_names)} already there" in again.stdout
    )
    assert {name: (out / name).stat().st_mtime_ns for name in kept_names} == mtimes
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for path in reference.iterdir():
        np.testing.assert_array_equal(_pixels(out / path.name), _pixels(path))
        assert _text(out / path.name)["Comment"] == _text(path)["Comment"]


def _stop_line(stderr: str) -> str:
    """The one error line of a stopped run (after its per-batch progress lines)."""
    errors = [line for line in stderr.splitlines() if not line.startswith("latent-onnx: batch ")]
    assert len(errors) == 1 and errors[0].startswith("latent-onnx: error: "), stderr
    return errors[0]


@pytest.mark.parametrize(
    "signum, code, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")]
)
def test_a_killed_run_names_what_it_wrote_leaves_no_temporary_file_and_resumes(
    run, tiny_bundle_template, tmp_path, signum, code, word
):
    reference, out = tmp_path / "reference", tmp_path / "killed"
    assert run(*_generate_command(tiny_bundle_template, reference, "--batch-size", 5, steps=4000)).exit_code == 0
    command = _generate_command(tiny_bundle_template, out, steps=4000)
    process = _subprocess(command, cwd=tmp_path)
    deadline = time.monotonic() + 100
    while len(list(out.glob("*.png"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=100)
    assert process.returncode == code, stderr
    line = _stop_line(stderr)
    assert line.startswith(f"latent-onnx: error: {word}; wrote ") and "the same command again makes the rest" in line
    present = sorted(p.name for p in out.iterdir())
    assert present == sorted(_written_names(line)) and 2 <= len(present) < 12  # exactly those, no .tmp file
    _check_resumed(run, command, out, reference, present)


def test_a_full_disk_stops_with_the_list_of_written_files_and_the_rerun_resumes(run, tiny_bundle_template, tmp_path):
    reference = tmp_path / "reference"
    command = _generate_command(tiny_bundle_template, tmp_path / "full")
    assert run(*_generate_command(tiny_bundle_template, reference)).exit_code == 0
    sizes = [(reference / f"sandal-s3-{i:04d}.png").stat().st_size for i in range(12)]
    first_bigger = next(j for j in range(1, 12) if sizes[j] > max(sizes[:j]))  # the limit lets 0 .. j-1 through
    limit = max(sizes[:first_bigger])

    def limited():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "full"
    process = _subprocess(command, cwd=tmp_path, preexec=limited)
    _, stderr = process.communicate(timeout=200)
    assert process.returncode == 5, stderr
    line = _stop_line(stderr)
    assert "cannot write" in line and "File too large" in line and f"wrote {first_bigger} of 12 image(s)" in line
    present = sorted(p.name for p in out.iterdir())
    assert present == sorted(_written_names(line)) == [f"sandal-s3-{i:04d}.png" for i in range(first_bigger)]
    _check_resumed(run, command, out, reference, present)


def test_upscale_grid_trajectory_and_their_parameters(run, tiny_bundle_template):
    args = [
        "generate",
        "--bundle",
        tiny_bundle_template,
        "--class",
        "sneaker",
        "-n",
        5,
        "--seed",
        1,
        "--steps",
        4,
        "--upscale",
        5,
        "--resample",
        "lanczos",
        "--grid",
        "--save-trajectory",
        "chain.gif",
    ]
    done = run(*args)
    assert done.exit_code == 0, done.output
    png = Path("out/sneaker-s1-0000.png")
    assert Image.open(png).size == (20, 20)
    parameters = json.loads(_text(png)[PNG_TEXT_KEY])
    assert parameters["upscale"] == 5 and parameters["resample"] == "lanczos"
    assert "--upscale 5 --resample lanczos" in _text(png)["Comment"]
    grid = _pixels("out/sneaker-s1-0000-grid.png")  # 3x2 cells of 20 px with 5 px grey gutters
    assert grid.shape == (2 * 20 + 5, 3 * 20 + 2 * 5, 3)
    assert (grid[20:25] == GUTTER_GREY).all() and (grid[:, 20:25] == GUTTER_GREY).all()
    np.testing.assert_array_equal(grid[:20, 25:45], _pixels("out/sneaker-s1-0001.png"))
    with Image.open("out/chain.gif") as gif:
        assert gif.size == (128, 128) and gif.n_frames == 4  # a frame a step; at least 128 px: 32x the 4 px images
    mtime = Path("out/chain.gif").stat().st_mtime_ns
    again = run(*args)  # everything is there with the same parameters: kept (the grid is remade from the PNGs)
    assert again.exit_code == 0 and "kept 5 already there" in again.stdout and "kept out/chain.gif" in again.stdout
    assert Path("out/chain.gif").stat().st_mtime_ns == mtime
    other = run(*args[:-2], "--save-trajectory", "chain.gif", "--resample", "nearest")
    assert other.exit_code == 5 and "other generation parameters" in other.stderr


def test_files_that_are_not_ours_are_never_replaced_without_overwrite(run, tiny_bundle_template):
    base = ["generate", "--bundle", tiny_bundle_template, "--class", "sandal", "-n", 2, "--seed", 4, "--steps", 2]
    assert run(*base).exit_code == 0
    png = Path("out/sandal-s4-0001.png").resolve()
    clash = run(*base, "--save-trajectory", png)  # the absolute path of one of the PNGs
    assert clash.exit_code == 5 and "names a file the images" in clash.stderr
    grid_clash = run(*base, "--grid", "--save-trajectory", "sandal-s4-0000-grid.png")
    assert grid_clash.exit_code == 5 and "or the grid" in grid_clash.stderr
    Path("chain.gif").write_bytes(b"mine")
    for name in ("./chain.gif", str(Path("chain.gif").resolve())):  # a path is taken as given: the working folder
        refused = run(*base, "--save-trajectory", name)
        assert refused.exit_code == 5 and "chain.gif already exists" in refused.stderr
        assert Path("chain.gif").read_bytes() == b"mine" and not Path("out/chain.gif").exists()
    Path("out/sandal-s4-0000-grid.png").write_bytes(b"mine too")
    refused = run(*base, "--grid")
    assert refused.exit_code == 5 and Path("out/sandal-s4-0000-grid.png").read_bytes() == b"mine too"
    Path("out/sandal-s4-0000.png").write_bytes(b"not a png")
    refused = run(*base)
    assert refused.exit_code == 5 and Path("out/sandal-s4-0000.png").read_bytes() == b"not a png"
    assert run(*base, "--grid", "--save-trajectory", "./chain.gif", "--overwrite").exit_code == 0
    with Image.open("chain.gif") as gif:
        assert gif.format == "GIF"
    assert sorted(p.name for p in Path("out").iterdir()) == [
        "sandal-s4-0000-grid.png",
        "sandal-s4-0000.png",
        "sandal-s4-0001.png",
    ]


def test_json_output_never_holds_a_bare_nan(run, tiny_bundle_template):
    args = [
        "generate",
        "--bundle",
        tiny_bundle_template,
        "--class",
        "sandal",
        "-n",
        1,
        "--seed",
        4,
        "--steps",
        2,
        "--json",
    ]
    assert run(*args).exit_code == 0
    png = Path("out/sandal-s4-0000.png")
    text = _text(png)
    stored = json.loads(text[PNG_TEXT_KEY])
    stored["logp"] = float("nan")  # a file with the same parameters whose recorded logp is NaN
    from latent_onnx.images import save_png

    save_png(Image.open(png).convert("RGB"), png, {**text, PNG_TEXT_KEY: json.dumps(stored)})
    again = run(*args)
    assert again.exit_code == 0 and _strict_json(again.stdout)["samples"][0]["logp"] is None


def test_off_a_terminal_each_finished_batch_prints_one_line(run, tiny_bundle_template):
    done = run(
        "generate", "--bundle", tiny_bundle_template, "--class", "sandal", "-n", 5, "--batch-size", 2, "--steps", 2
    )
    assert done.exit_code == 0
    assert done.stderr.splitlines() == [
        f"latent-onnx: batch {b} of 3 done, {w} of 5 image(s) written" for b, w in ((1, 2), (2, 4), (3, 5))
    ]
    quiet = run(
        "generate", "--bundle", tiny_bundle_template, "--class", "sandal", "-n", 5, "--steps", 2, "--json", "--out", "q"
    )
    assert quiet.exit_code == 0 and quiet.stderr == ""
