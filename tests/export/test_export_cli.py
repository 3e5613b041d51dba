"""latent-onnx-export: build a bundle from a spec factory; one-line errors with exit codes."""

from __future__ import annotations

import importlib.util
import json

import pytest

from export_tools import cli


def run(argv, capsys, stream: str = "err") -> tuple[int, str]:
    """Exit code and what the command printed on `stream`."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return exit_info.value.code, getattr(capsys.readouterr(), stream)


def test_build_writes_the_bundle_and_prints_progress(tmp_path, capsys):
    code, err = run(["build", "tiny_networks:generator_only_spec", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert "exporting generator" in err and "max |ONNX Runtime - PyTorch|" in err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["name"] == "tiny-generator"
    code, err = run(["build", "tiny_networks:generator_only_spec", str(tmp_path / "out")], capsys)
    assert (
        code == 6 and err.startswith("latent-onnx-export: error: ") and "already exists" in err and err.count("\n") == 1
    )


@pytest.mark.parametrize(
    "factory, message",
    [
        ("tiny_networks", "must look like package.module:function"),
        ("no_such_module:spec", "cannot import no_such_module"),
        ("tiny_networks:nothing", "has no function 'nothing'"),
        ("tiny_networks:head", "returned Sequential, not a BundleSpec"),
    ],
)
def test_bad_factories_give_one_line(tmp_path, capsys, factory, message):
    code, err = run(["build", factory, str(tmp_path / "out")], capsys)
    assert code == 6 and message in err and err.count("\n") == 1


def test_missing_torch_says_how_to_install(tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a)
    )
    code, err = run(["build", "tiny_networks:generator_only_spec", str(tmp_path / "out")], capsys)
    assert code == 6
    assert "pip install torch==2.13.0" in err and "pip install 'latent-onnx[export]'" in err


def test_help_lists_commands_without_running_them(capsys):
    code, out = run(["--help"], capsys, stream="out")
    assert code == 0
    assert "build" in out and "Export PyTorch networks" in out


def test_registered_subcommands_are_imported_lazily_and_absent_ones_hidden(tmp_path, capsys, monkeypatch):
    (tmp_path / "demo_commands.py").write_text(
        "import click\n\n@click.group()\ndef main():\n    'Demo commands.'\n\n"
        "@main.command()\ndef hello():\n    click.echo('hello from demo')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "demo", ("demo_commands", "main"))
    monkeypatch.setitem(cli.SUBCOMMANDS, "absent", ("export_tools.no_such_module", "main"))
    code, out = run(["--help"], capsys, stream="out")
    assert code == 0 and "demo" in out and "absent" not in out
    code, out = run(["demo", "hello"], capsys, stream="out")
    assert code == 0 and out == "hello from demo\n"
    code, err = run(["absent"], capsys)
    assert code == 2 and "No such command 'absent'" in err
