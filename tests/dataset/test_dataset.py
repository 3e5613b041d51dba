"""`latent-onnx dataset` and `write_dataset` on the tiny bundle: determinism, resuming, formats, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import files_of
from PIL import Image

from latent_onnx import Pipeline
from latent_onnx.cli import cli
from latent_onnx.dataset import MANIFEST_NAME, DatasetSettings, RunOptions, condition_seed, write_dataset


def run_cli(*args: str):
    return CliRunner().invoke(cli, ["dataset", *args])


def manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST_NAME).read_text())


def test_images_are_generate_samples_with_the_condition_seed(bundle, tmp_path):
    out = tmp_path / "ds"
    result = run_cli(
        str(out),
        "--bundle",
        str(bundle),
        "--classes",
        "sandal,0",
        "--per-class",
        "5",
        "--shard-size",
        "3",
        "--seed",
        "7",
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(r["label"], r["index"]) for r in rows] == [("sandal", i) for i in range(5)] + [
        ("sneaker", i) for i in range(5)
    ]
    assert rows[0]["seed"] == condition_seed(7, "class:1") != rows[5]["seed"] == condition_seed(7, "class:0")
    pipe = Pipeline.from_bundle(bundle, device="cpu", threads=1)
    alone = pipe.generate(classes="1", seed=rows[0]["seed"], start_index=3, n=1)  # image 3 of sandal, made alone
    assert np.array_equal(np.asarray(Image.open(out / "sandal" / "sandal-000003.png")), alone.pixels[0])
    text = Image.open(out / "sandal" / "sandal-000003.png").text
    assert f"--seed {rows[0]['seed']} --start-index 3 -n 1" in text["Comment"]
    # a condition's images do not depend on which other conditions the dataset has
    other = tmp_path / "other"
    assert (
        run_cli(str(other), "--bundle", str(bundle), "--classes", "1", "--per-class", "5", "--seed", "7").exit_code == 0
    )
    assert {n: b for n, b in files_of(other).items() if n.endswith(".png")} == {
        n: b for n, b in files_of(out).items() if n.startswith("sandal/")
    }


def test_per_sample_files_do_not_depend_on_format_shard_size_or_workers(bundle, tmp_path):
    folder, shards = tmp_path / "folder", tmp_path / "wds"
    write_dataset(folder, DatasetSettings(bundle=str(bundle), per_class=6, shard_size=5))
    write_dataset(
        shards,
        DatasetSettings(bundle=str(bundle), per_class=6, shard_size=4, format="webdataset"),
        RunOptions(workers=2, batch_size=3),
    )
    members = {}
    for tar in sorted(shards.glob("shard-*.tar")):
        with tarfile.open(tar) as archive:
            members.update({m.name: archive.extractfile(m).read() for m in archive.getmembers()})
    pngs = {n.split("/")[1]: b for n, b in files_of(folder).items() if n.endswith(".png")}
    assert len(pngs) == 18 and pngs == {n: b for n, b in members.items() if n.endswith(".png")}
    rows = {
        json.loads(line)["sha256"]: json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()
    }
    for name, data in members.items():
        if name.endswith(".json"):
            row = json.loads(data)
            assert {**row, "file_name": rows[row["sha256"]]["file_name"]} == rows[row["sha256"]]
    assert len(list(shards.glob("shard-*.tar"))) == 5 and manifest(shards)["complete"]


def test_imagefolder_loads_with_hugging_face_datasets(bundle, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "ds"
    write_dataset(out, DatasetSettings(bundle=str(bundle), per_class=4, shard_size=5))
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(loaded) == 12
    assert sorted(set(loaded["label"])) == ["ankle boot", "sandal", "sneaker"]
    for sample in loaded:
        assert (
            sample["label"] == ["sneaker", "sandal", "ankle boot"][sample["label_index"]]
            and sample["class_index"] == sample["label_index"]
        )
        folder = {"sneaker": "sneaker", "sandal": "sandal", "ankle boot": "ankle-boot"}[sample["label"]]
        on_disk = Image.open(out / folder / f"{folder}-{sample['index']:06d}.png")
        assert np.array_equal(np.asarray(sample["image"].convert("RGB")), np.asarray(on_disk))


def test_webdataset_loads_with_webdataset(bundle, tmp_path):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "ds"
    write_dataset(
        out,
        DatasetSettings(
            bundle=str(bundle), classes="ankle boot,sneaker", per_class=5, shard_size=3, format="webdataset"
        ),
    )
    urls = [str(p) for p in sorted(out.glob("shard-*.tar"))]
    samples = list(
        wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "png", "cls", "txt", "json")
    )
    assert [(key, label, text) for key, _, label, text, _ in samples] == [
        (f"ankle-boot-{i:06d}", 0, "ankle boot") for i in range(5)
    ] + [(f"sneaker-{i:06d}", 1, "sneaker") for i in range(5)]
    assert all(row["class_index"] == [2, 0][label] and image.size == (4, 4) for _, image, label, _, row in samples)


def test_captions_file_gives_one_label_per_caption(bundle, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("# colours\na red sneaker\n\na blue sandal\n")
    out = tmp_path / "ds"
    result = run_cli(
        str(out), "--bundle", str(bundle), "--captions", str(captions), "--classes", "sandal", "--per-class", "2"
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(r["file_name"], r["caption"], r["label_index"]) for r in rows] == [
        ("sandal/sandal-000000.png", None, 0),
        ("sandal/sandal-000001.png", None, 0),
        ("a-red-sneaker/a-red-sneaker-000000.png", "a red sneaker", 1),
        ("a-red-sneaker/a-red-sneaker-000001.png", "a red sneaker", 1),
        ("a-blue-sandal/a-blue-sandal-000000.png", "a blue sandal", 2),
        ("a-blue-sandal/a-blue-sandal-000001.png", "a blue sandal", 2),
    ]
    assert json.loads(Image.open(out / rows[2]["file_name"]).text["latent-onnx"])["caption"] == "a red sneaker"


def test_each_kind_of_condition_runs_with_the_bundles_settings_for_it_and_the_manifest_says_which(tmp_path):
    from runtime_bundles import edit_manifest, write_tiny_bundle

    root = tmp_path / "tiny"
    write_tiny_bundle(root)
    edit_manifest(root, lambda m: m.update(sampler_by_condition={"caption": {"steps": 7}}))
    captions = tmp_path / "captions.txt"
    captions.write_text("a red sneaker\n")
    out = tmp_path / "ds"
    result = run_cli(
        str(out), "--bundle", str(root), "--classes", "sandal", "--captions", str(captions), "--per-class", "1"
    )
    assert result.exit_code == 0, result.output
    pipe = Pipeline.from_bundle(root)
    assert manifest(out)["settings"]["sampler"] == {
        "class": pipe.sampler_config().to_dict(),
        "caption": {**pipe.sampler_config().to_dict(), "steps": 7},
    }
    steps = {
        folder: json.loads(Image.open(out / folder / f"{folder}-000000.png").text["latent-onnx"])["sampler"]["steps"]
        for folder in ("sandal", "a-red-sneaker")
    }
    assert steps == {"sandal": pipe.sampler_config().steps, "a-red-sneaker": 7}


def test_rerun_verifies_keeps_and_remakes(bundle, tmp_path):
    out, settings = tmp_path / "ds", DatasetSettings(bundle=str(bundle), per_class=6, shard_size=4)
    first = write_dataset(out, settings)
    reference = files_of(out)
    assert (first.shards, first.kept, first.made) == (5, 0, 5)
    again = write_dataset(out, settings)
    assert (again.kept, again.made) == (5, 0) and files_of(out) == reference
    (out / "sandal" / "sandal-000002.png").write_bytes(b"damaged")  # in shard 1 (images 4 .. 7)
    (out / "shard-leftover.tmp").write_bytes(b"")
    (out / "sneaker" / ".sneaker-000001.png.x1.tmp").write_bytes(b"partial")  # a stopped run's temporary file
    repaired = write_dataset(out, settings)
    assert (repaired.kept, repaired.made) == (4, 1)
    assert {n: b for n, b in files_of(out).items() if n != "shard-leftover.tmp"} == reference


def test_other_settings_are_refused_then_replaced_with_overwrite(bundle, tmp_path):
    out = tmp_path / "ds"
    assert run_cli(str(out), "--bundle", str(bundle), "--per-class", "3").exit_code == 0
    before = files_of(out)
    refused = run_cli(str(out), "--bundle", str(bundle), "--per-class", "3", "--steps", "5")
    assert refused.exit_code == 5 and len(refused.output.strip().splitlines()) == 1
    assert "other settings (sampler class steps 20, not 5)" in refused.output and files_of(out) == before
    replaced = run_cli(str(out), "--bundle", str(bundle), "--classes", "sneaker", "--per-class", "2", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert sorted(n for n in files_of(out) if n.endswith(".png")) == [
        "sneaker/sneaker-000000.png",
        "sneaker/sneaker-000001.png",
    ]
    assert not (out / "sandal").exists() or not any((out / "sandal").iterdir())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = run_cli(str(foreign), "--bundle", str(bundle), "--per-class", "1")
    assert result.exit_code == 5 and "holds no latent-onnx dataset" in result.output


@pytest.mark.parametrize(
    "args, code, words",
    [
        (
            ["--classes", "sneakr,7,sandal,boots"],
            2,
            ["3 problem(s)", "unknown class 'sneakr'", "class index 7", "'boots'"],
        ),
        (["--classes", "sneaker,0"], 2, ["'sneaker' is listed twice"]),
        (["--per-class", "0"], 2, ["per-class must be an integer from 1"]),
        (["--shard-size", "0"], 2, ["shard size must be"]),
        (["--steps", "-1"], 2, ["steps must be"]),
        (["--preset", "fast"], 2, ["unknown preset 'fast'"]),
        (["--workers", "0"], 2, ["workers must be"]),
    ],
)
def test_bad_input_is_one_line_before_any_work(bundle, tmp_path, args, code, words):
    out = tmp_path / "ds"
    result = run_cli(
        str(out), "--bundle", str(bundle), *(["--per-class", "2"] if "--per-class" not in args else []), *args
    )
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latent-onnx: error: ")
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists()


def test_unknown_caption_words_and_classes_are_reported_together(bundle, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red sneaker\na green sneaker\na purple boot\n")
    result = run_cli(
        str(tmp_path / "ds"),
        "--bundle",
        str(bundle),
        "--classes",
        "sandal,slipper",
        "--captions",
        str(captions),
        "--per-class",
        "2",
    )
    assert result.exit_code == 2
    line = result.output.strip()
    assert "3 problem(s)" in line and "'slipper'" in line and "green" in line and "purple, boot" in line
    assert len(line.splitlines()) == 1 and not (tmp_path / "ds").exists()


def test_unwritable_out_is_one_line(bundle):
    result = run_cli("/proc/latent-onnx-dataset", "--bundle", str(bundle), "--per-class", "1")
    assert result.exit_code == 5 and "not writable" in result.output and len(result.output.strip().splitlines()) == 1


def _command(out: Path, bundle: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "latent_onnx", "dataset", str(out), "--bundle", str(bundle), *args]


def test_a_full_disk_stops_with_one_line_and_the_rerun_completes(bundle, tmp_path):
    args = ("--per-class", "8", "--shard-size", "4")
    reference, out = tmp_path / "reference", tmp_path / "ds"
    subprocess.run(_command(reference, bundle, *args), check=True, capture_output=True)

    def small_disk():  # writes past 6 KB fail (EFBIG), as on a full disk: metadata.jsonl (7 KB) cannot be written
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    stopped = subprocess.run(_command(out, bundle, *args), capture_output=True, text=True, preexec_fn=small_disk)
    assert stopped.returncode == 5, stopped.stderr
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("latent-onnx: error")]
    assert errors == [stopped.stderr.strip().splitlines()[-1]] and "metadata.jsonl" in errors[0]
    recorded = manifest(out)
    assert not recorded["complete"] and len(recorded["shards"]) == 6  # every finished shard recorded
    resumed = subprocess.run(_command(out, bundle, *args), capture_output=True, text=True, check=True)
    assert "(6 kept, 0 made)" in resumed.stdout
    assert files_of(out) == files_of(reference)


def test_sigkill_mid_run_then_rerun_is_byte_identical(bundle, tmp_path):
    args = ("--per-class", "60", "--shard-size", "10", "--steps", "300", "--format", "webdataset")
    reference, out = tmp_path / "reference", tmp_path / "ds"
    subprocess.run(_command(reference, bundle, *args), check=True, capture_output=True)
    process = subprocess.Popen(
        _command(out, bundle, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / MANIFEST_NAME).exists() and manifest(out)["shards"]:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its workers
    process.wait()
    done = len(manifest(out)["shards"])
    assert 0 < done < 18, "the run was not stopped mid-way"
    resumed = subprocess.run(_command(out, bundle, *args), capture_output=True, text=True, check=True)
    assert f"({done} kept, {18 - done} made)" in resumed.stdout
    assert files_of(out) == files_of(reference)


def _kill_workers(stop: threading.Event, limit: int, killed: list) -> None:
    """SIGKILL this process's dataset worker processes as they appear, `limit` of them at most."""
    me = os.getpid()
    while not stop.is_set() and len(killed) < limit:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (stat.parent / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == me and b"spawn_main" in cmdline and int(stat.parent.name) not in killed:
                os.kill(int(stat.parent.name), signal.SIGKILL)
                killed.append(int(stat.parent.name))
        time.sleep(0.01)


@pytest.mark.parametrize("deaths", [1, 2])
def test_a_dead_worker_is_retried_once_then_the_run_stops(bundle, tmp_path, deaths):
    settings = DatasetSettings(bundle=str(bundle), per_class=4, shard_size=6)
    reference = tmp_path / "reference"
    write_dataset(reference, settings)
    out = tmp_path / "ds"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_workers, args=(stop, deaths, killed))
    killer.start()
    try:
        result = CliRunner().invoke(
            cli, ["dataset", str(out), "--bundle", str(bundle), "--per-class", "4", "--shard-size", "6"]
        )
    finally:
        stop.set()
        killer.join()
    assert len(killed) == deaths
    if deaths == 1:
        assert result.exit_code == 0, result.output
        assert files_of(out) == files_of(reference)
    else:
        assert result.exit_code == 8
        assert "a worker died 2 times while making shard 000000 (images 0 .. 5" in result.output
        assert result.output.strip().splitlines()[-1].startswith("latent-onnx: error:")
        assert manifest(out)["shards"] == {}


def test_ray_backend_without_ray_names_the_extra(bundle, tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None; from latent_onnx.cli import main; "
        f"main(['dataset', {str(tmp_path / 'ds')!r}, '--bundle', {str(bundle)!r}, '--per-class', '1', '--backend', 'ray'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "latent-onnx: error: the ray backend needs Ray: pip install 'latent-onnx[ray]'"
