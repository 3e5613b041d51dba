"""Hostile and careless input: one-line errors (never a traceback), bundles a folder cannot shadow,
text that is never read as markup or escape codes, malformed manifests and priors, broken graphs."""

import copy
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from PIL import Image
from runtime_bundles import (
    D,
    build_graphs,
    edit_manifest,
    sha256_file,
    tiny_weights,
    use_prior_file,
    write_manifest,
    write_tiny_bundle,
)

from latent_onnx import BundleError, Pipeline, load_bundle
from latent_onnx.bundle import DEFAULT_BUNDLE, resolve_bundle_dir, shipped_models_dir
from latent_onnx.errors import printable

REPO_ROOT = Path(__file__).resolve().parents[2]


def _one_line_error(result, code: int, message: str):
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("latent-onnx: error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


# --- a bare name is a shipped bundle, a path looks like a path -------------------------------------


@pytest.mark.skipif(not (shipped_models_dir() / DEFAULT_BUNDLE / "manifest.json").is_file(), reason="no shipped bundle")
def test_a_folder_in_the_working_directory_never_shadows_a_shipped_bundle(run, tiny_bundle_template, monkeypatch):
    shutil.copytree(tiny_bundle_template, DEFAULT_BUNDLE)  # ./fashion-colors/, a different bundle
    shipped = (shipped_models_dir() / DEFAULT_BUNDLE).resolve()
    assert resolve_bundle_dir(None) == resolve_bundle_dir(DEFAULT_BUNDLE) == shipped
    monkeypatch.setenv("LATENT_ONNX_BUNDLE", DEFAULT_BUNDLE)
    assert resolve_bundle_dir(None) == shipped
    described = json.loads(run("info", "--json").stdout)
    assert described["path"] == str(shipped) and described["name"] == DEFAULT_BUNDLE
    for path in (f"./{DEFAULT_BUNDLE}", str(Path(DEFAULT_BUNDLE).resolve())):
        assert resolve_bundle_dir(path) == Path(DEFAULT_BUNDLE).resolve()
        assert json.loads(run("classes", "--bundle", path, "--json").stdout)["bundle"] == "tiny"


def test_a_mistyped_bundle_name_gets_a_suggestion_and_a_folder_of_that_name_a_hint(
    run, tiny_bundle_template, monkeypatch
):
    names = sorted(p.name for p in shipped_models_dir().iterdir() if (p / "manifest.json").is_file())
    if names:
        typo = names[0][:-1]
        _one_line_error(
            run("classes", "--bundle", typo), 3, f"did you mean '{names[0]}'? shipped bundles: {', '.join(names)}"
        )
    shutil.copytree(tiny_bundle_template, "mine")
    _one_line_error(run("classes", "--bundle", "mine"), 3, "for the folder of that name write ./mine")
    monkeypatch.setenv("LATENT_ONNX_BUNDLE", "mine")
    _one_line_error(run("generate", "--class", "sneaker"), 3, "no bundle named 'mine'")


# --- numbers and digits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        ("sneaker:1e39", "beyond"),
        ("sneaker:3e38,sneaker:3e38", "beyond"),
        ("sneaker:1e400", "beyond"),
        ("sneaker:-1e39", "beyond"),
        ("sneaker:inf", "must be finite"),
        ("sneaker:NaN", "must be finite"),
        ("sneaker:²", "is not a number"),
        ("sneaker:１", "is not a number"),
        ("sneaker:1_0", "is not a number"),
        ("²", "unknown class '²'"),
        ("１", "unknown class '１'"),
        ("٣", "unknown class '٣'"),
        ("0x1", "unknown class"),
    ],
)
def test_class_specs_with_odd_numbers_are_one_line_errors(run, tiny_bundle_template, spec, message):
    _one_line_error(run("generate", "--bundle", tiny_bundle_template, "--class", spec, "--steps", 1), 2, message)


@pytest.mark.parametrize("option", ["--eps1", "--eps2", "--prior-weight", "--condition-scale", "--eps1-final"])
def test_sampler_numbers_beyond_float32_are_refused(run, tiny_bundle_template, option):
    _one_line_error(
        run("generate", "--bundle", tiny_bundle_template, "--class", "sneaker", option, "1e39"), 2, "float32"
    )


# --- init images ----------------------------------------------------------------------------------


def _png_of_size(width, height) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content, message",
    [
        (_png_of_size(5000, 4000), "is 5000x4000 pixels"),  # refused before it is decoded
        (_png_of_size(12, 12)[:45], "cannot read --init-image"),  # truncated
        (b"GIF89a" + b"\xff" * 40, "cannot read --init-image"),
        (b"\x89PNG\r\n\x1a\n" + os.urandom(200), "cannot read --init-image"),
        (b"not an image", "cannot read --init-image"),
    ],
)
def test_unusable_init_images_are_one_line_errors(run, tiny_bundle_template, content, message):
    Path("init.png").write_bytes(content)
    _one_line_error(
        run("generate", "--bundle", tiny_bundle_template, "--class", "sneaker", "--init-image", "init.png"), 2, message
    )


def test_pil_decompression_bomb_warning_is_an_error(run, tiny_bundle_template, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 pixels: PIL warns (over 100, under 200)
    Path("init.png").write_bytes(_png_of_size(12, 12))
    _one_line_error(
        run("generate", "--bundle", tiny_bundle_template, "--class", "sneaker", "--init-image", "init.png"),
        2,
        "DecompressionBombWarning",
    )


# --- text is printed, never interpreted ------------------------------------------------------------


@pytest.mark.parametrize("folder", ["o[/x]", "out[v2]", "[bold]b[/bold]", "a\x1b[31mred"])
def test_output_folders_are_reported_as_given(run, tiny_bundle_template, folder):
    done = run(
        "generate",
        "--bundle",
        tiny_bundle_template,
        "--class",
        "sneaker",
        "-n",
        1,
        "--steps",
        1,
        "--seed",
        0,
        "--out",
        folder,
    )
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(f"wrote 1 image(s) to {printable(folder)}{os.sep} ")
    assert Path(folder, "sneaker-s0-0000.png").is_file()


def test_bundle_text_is_printed_literally_with_control_characters_escaped(run, tiny_bundle):
    (tiny_bundle / "classes.txt").write_text(
        "[bold]sneaker[/bold]\nsan\x1b[2Jdal\nboot\u202eevil, [red]x\n", encoding="utf-8"
    )
    edit_manifest(
        tiny_bundle,
        lambda m: (
            m.update(description="[bold]tiny[/] \x1b]0;title\x07 [link=x]y[/link]"),
            m["classes"].update(sha256=sha256_file(tiny_bundle / "classes.txt")),
        ),
    )
    info = run("info", "--bundle", tiny_bundle)
    assert info.exit_code == 0, info.output
    assert "[bold]tiny[/] \\x1b]0;title\\x07 [link=x]y[/link]" in info.stdout and "\x1b" not in info.stdout
    listed = run("classes", "--bundle", tiny_bundle)
    assert listed.stdout.splitlines() == ["0\t[bold]sneaker[/bold]", "1\tsan\\x1b[2Jdal", "2\tboot\\u202eevil, [red]x"]
    _one_line_error(
        run("generate", "--bundle", tiny_bundle, "--class", "\x1b[31mshoe"), 2, "unknown class '\\x1b[31mshoe'"
    )
    as_json = json.loads(run("classes", "--bundle", tiny_bundle, "--json").stdout)
    assert as_json["classes"][1] == {
        "index": 1,
        "names": ["san\x1b[2Jdal"],
    }  # JSON keeps the text exact (escaped by JSON)


# --- malformed manifests and priors: always a BundleError -------------------------------------------

_WRONG_VALUES = [None, True, 0, -1, 2.5, 1e300, "x", "", [], [1, "a"], {}, {"kind": "gaussian"}]


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))


def test_wrong_json_types_at_every_level_of_the_manifest_are_bundle_errors(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    tried = 0
    for path in list(_paths(manifest))[1:]:
        for wrong in _WRONG_VALUES:
            changed = copy.deepcopy(manifest)
            parent = changed
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = wrong
            write_manifest(tiny_bundle, changed)
            try:
                load_bundle(tiny_bundle)
            except BundleError as error:
                assert "\n" not in str(error)
            tried += 1
    assert tried > 300


@pytest.mark.parametrize(
    "text",
    [
        '{"format": NaN}',
        '{"format": Infinity}',
        '{"format": 1e999}',
        '{"name": ' + "1" * 5000 + "}",
        "[" * 100000 + "]" * 100000,
        "[]",
        '"text"',
        "\xff\xfe",
        "",
    ],
)
def test_manifests_that_are_not_usable_json_are_bundle_errors(tiny_bundle, text):
    (tiny_bundle / "manifest.json").write_bytes(
        text.encode("utf-8", "surrogateescape") if text != "\xff\xfe" else b"\xff\xfe"
    )
    with pytest.raises(BundleError):
        load_bundle(tiny_bundle)


def test_info_json_never_holds_nan_from_a_manifest(run, tiny_bundle):
    text = (tiny_bundle / "manifest.json").read_text().replace('"recipe":', '"nan": NaN, "recipe":')
    (tiny_bundle / "manifest.json").write_text(text)
    _one_line_error(run("info", "--bundle", tiny_bundle, "--json"), 3, "NaN is not a number JSON allows")


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _good_arrays(m=2):
    return {"weights": np.full(m, 1 / m), "means": np.zeros((m, D)), "scale_tril": np.stack([np.eye(D)] * m)}


def _zip_with(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


PRIOR_FILES = {
    "object array": _npz(**{**_good_arrays(), "weights": np.array([0.5, 0.5], dtype=object)}),
    "complex": _npz(**{**_good_arrays(), "means": np.zeros((2, D), dtype=complex)}),
    "strings": _npz(**{**_good_arrays(), "weights": np.array(["a", "b"])}),
    "structured": _npz(**{**_good_arrays(), "weights": np.zeros(2, dtype=[("a", "f8")])}),
    "datetime": _npz(**{**_good_arrays(), "weights": np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[D]")}),
    "0-d weights": _npz(**{**_good_arrays(), "weights": np.float64(1.0)}),
    "wrong means shape": _npz(**{**_good_arrays(), "means": np.zeros((2, D + 1))}),
    "3-d means": _npz(**{**_good_arrays(), "means": np.zeros((2, D, 1))}),
    "wrong tril shape": _npz(**{**_good_arrays(), "scale_tril": np.zeros((2, D))}),
    "NaN": _npz(**{**_good_arrays(), "means": np.full((2, D), np.nan)}),
    "beyond float32": _npz(**{**_good_arrays(), "means": np.full((2, D), 1e300)}),
    "nearly singular": _npz(**{**_good_arrays(), "scale_tril": np.stack([np.eye(D) * 1e-30] * 2)}),
    "upper triangular": _npz(**{**_good_arrays(), "scale_tril": np.stack([np.ones((D, D))] * 2)}),
    "missing key": _npz(weights=np.full(2, 0.5), means=np.zeros((2, D))),
    "an .npy": (lambda b: (np.save(b, np.zeros(3)), b.getvalue())[1])(io.BytesIO()),
    "garbage": os.urandom(300),
    "empty": b"",
    "zip of garbage": _zip_with("weights.npy", os.urandom(100)),
    "truncated npz": _npz(**_good_arrays())[:200],
    "wrong component count": _npz(**_good_arrays(3)),
}


@pytest.mark.parametrize("name", PRIOR_FILES)
def test_malformed_prior_files_are_bundle_errors(tiny_bundle, name):
    use_prior_file(tiny_bundle, PRIOR_FILES[name], components=2)
    with pytest.raises(BundleError, match="prior.npz"):
        load_bundle(tiny_bundle)


# --- graphs that pass their contract but fail or return garbage when run ----------------------------


def _bundle_with(tmp_path, change) -> Path:
    graphs = build_graphs(tiny_weights())
    change(graphs)
    root = tmp_path / "broken"
    write_tiny_bundle(root, graphs=graphs)
    return root


def _gather_out_of_range(graphs):
    """A generator whose contract is fine but that fails inside ONNX Runtime: it gathers bg at index 1000."""
    graph = graphs["generator"].graph
    add = next(node for node in graph.node if list(node.output) == ["pre"])
    add.input[0] = "pre_plus"
    graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.float32(0), "c0"),
            onnx.numpy_helper.from_array(np.float32(1000), "c1000"),
            onnx.numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("ReduceSum", ["z", "axis1"], ["zsum"], keepdims=0),
            helper.make_node("Mul", ["zsum", "c0"], ["zero"]),
            helper.make_node("Add", ["zero", "c1000"], ["big"]),
            helper.make_node("Cast", ["big"], ["index"], to=onnx.TensorProto.INT64),
            helper.make_node("Gather", ["bg", "index"], ["gathered"]),
            helper.make_node("Unsqueeze", ["gathered", "axis1"], ["column"]),
            helper.make_node("Add", ["pre0", "column"], ["pre_plus"]),
        ]
    )
    _sort_topologically(graph)


def _sort_topologically(graph):
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        node = next(n for n in pending if all(name in known for name in n.input))
        pending.remove(node)
        ordered.append(node)
        known.update(node.output)
    del graph.node[:]
    graph.node.extend(ordered)


def _nan_weights(graphs):
    weights = tiny_weights()
    weights["Wc"][0, 0] = np.nan
    graphs.update({k: v for k, v in build_graphs(weights).items() if k in ("classifier", "class_grad")})


def _nan_encoder(graphs):
    weights = tiny_weights()
    weights["We"][:] = np.inf
    graphs["encoder"] = build_graphs(weights)["encoder"]


def _wrong_grad_batch(graphs):
    graph = graphs["class_grad"].graph  # grad [2B, D] where the contract says [B, D]: shape inference cannot tell
    last = next(node for node in graph.node if "grad" in node.output)
    last.output[0] = "grad_once"
    graph.node.append(helper.make_node("Concat", ["grad_once", "grad_once"], ["grad"], axis=0))


@pytest.mark.parametrize(
    "change, command, message",
    [
        (_gather_out_of_range, "generate", "graph generator failed in ONNX Runtime on a batch of 1"),
        (_gather_out_of_range, "info", "graph generator failed in ONNX Runtime on a batch of 1"),
        (_nan_weights, "generate", "graph class_grad returned non-finite values"),
        (_nan_weights, "info", "returned non-finite"),
        (_nan_encoder, "init", "graph encoder returned non-finite codes"),
        (_nan_encoder, "info", "graph encoder returned non-finite 'z'"),
        (_wrong_grad_batch, "generate", "graph class_grad returned 'grad' as float32 [2, 6]"),
        (_wrong_grad_batch, "info", "graph class_grad returned 'grad' as float32 [2, 6]"),
    ],
)
def test_graphs_that_fail_or_return_garbage_at_run_time_are_bundle_errors(run, tmp_path, change, command, message):
    root = _bundle_with(tmp_path, change)
    if command == "info":
        result = run("info", root)
    else:
        Image.new("RGB", (4, 4)).save("init.png")
        extra = ["--init-image", "init.png"] if command == "init" else []
        result = run("generate", "--bundle", root, "--class", "sneaker", "-n", 1, "--steps", 2, *extra)
    _one_line_error(result, 3, message)
    assert not Path("out").exists() or not list(Path("out").iterdir())


def test_info_runs_every_graph_on_a_probe_and_takes_bundle_either_way(run, tiny_bundle_template):
    by_option = json.loads(run("info", "--bundle", tiny_bundle_template, "--json").stdout)
    by_argument = json.loads(run("info", tiny_bundle_template, "--json").stdout)
    assert by_option == by_argument and all(graph["checked"] for graph in by_option["graphs"].values())
    assert "ran on a probe input" in run("info", "--bundle", tiny_bundle_template).stdout
    _one_line_error(run("info", tiny_bundle_template, "--bundle", "other"), 2, "two bundles given")


# --- help ------------------------------------------------------------------------------------------


def test_group_help_lists_the_exit_codes(run):
    helped = run("--help")
    assert helped.exit_code == 0 and "Exit codes:" in helped.stdout and "143 terminated" in helped.stdout


def test_export_help_works_without_torch(tmp_path):
    script = "import sys\nsys.modules['torch'] = None\nfrom export_tools.cli import main\nmain(sys.argv[1:])\n"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for args in (["--help"], ["build", "--help"]):
        done = subprocess.run(
            [sys.executable, "-c", script, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert "Usage:" in done.stdout and "torch" not in done.stderr
    listed = subprocess.run(
        [sys.executable, "-c", script, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    ).stdout
    assert "build" in listed and "fashion" in listed and "imagenet" in listed
    refused = subprocess.run(
        [sys.executable, "-c", script, "build", "a:b", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 6 and "pip install torch" in refused.stderr


def test_pipeline_from_a_path_object_is_always_a_path(tiny_bundle_template, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Pipeline.from_bundle(Path(os.path.relpath(tiny_bundle_template)), device="cpu").bundle.name == "tiny"


def test_without_onnx_runtime_the_package_imports_and_the_cli_says_what_to_install():
    # a process where `import onnxruntime` fails, as on a base install without the cpu or gpu extra
    script = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "import latent_onnx; print(latent_onnx.__version__)\n"
        "from latent_onnx.__main__ import main; main(['classes'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "pip install 'latent-onnx[cpu]'" in done.stderr and done.stderr.startswith("latent-onnx: error: ")
