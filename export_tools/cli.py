"""`latent-onnx-export` / `python -m export_tools`: build bundles, plus the recipes' and converters' commands.

Other modules add command groups without editing this file's logic: each entry of SUBCOMMANDS names
a module and a click command in it; the module is imported only when its command runs (so `--help`
works without torch), and an entry whose module does not exist yet is simply not listed.
"""

from __future__ import annotations

import importlib
import importlib.util
import time

import click
from rich.console import Console
from rich.table import Table

from export_tools import ExportError, require_torch
from latent_onnx.cli import run_command  # the one error printer (also used by the recipes' commands)

# command name -> (module, attribute holding a click command or group), imported lazily
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "fashion": ("export_tools.recipes.fashion", "main"),
    "imagenet": ("export_tools.convert.cli", "main"),
}

_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    """A click group whose SUBCOMMANDS are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name, (module, _) in SUBCOMMANDS.items() if _module_exists(module)]
        return sorted(set(super().list_commands(ctx)) | set(lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return super().get_command(ctx, name)
        module_name, attribute = SUBCOMMANDS[name]
        if not _module_exists(module_name):
            return None
        require_torch()
        command = getattr(importlib.import_module(module_name), attribute, None)
        if not isinstance(command, click.Command):
            raise ExportError(f"{module_name}.{attribute} is not a click command: cannot offer `{name}`")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of --help; a lazy command that needs torch where torch is missing is listed, not imported."""
        rows = []
        for name in self.list_commands(ctx):
            try:
                command = self.get_command(ctx, name)
            except ExportError:
                rows.append((name, "(needs the export extra: torch, onnx, onnxscript)"))
                continue
            if command is not None and not command.hidden:
                rows.append(
                    (
                        name,
                        command.get_short_help_str(formatter.width - 6 - max(len(n) for n in self.list_commands(ctx))),
                    )
                )
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup)
def cli() -> None:
    """Export PyTorch networks to validated ONNX graphs and write latent-onnx bundles."""


def load_factory(reference: str):
    """The callable named by "package.module:function"; ExportError when it cannot be found."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ExportError(f"spec factory {reference!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExportError(f"cannot import {module_name} ({exc}): check the name and PYTHONPATH") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ExportError(f"{module_name} has no function {attribute!r}")
    return factory


@cli.command()
@click.argument("factory")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--overwrite", is_flag=True, help="replace an existing bundle directory (only once the new one is complete)"
)
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="torch CPU threads")
def build(factory: str, out: str, overwrite: bool, threads: int | None) -> None:
    """Write the bundle described by FACTORY ("package.module:function" returning a BundleSpec) to OUT."""
    require_torch()
    import torch

    from export_tools.bundle_writer import BundleSpec, write_bundle

    if threads:
        torch.set_num_threads(threads)
    spec = load_factory(factory)()
    if not isinstance(spec, BundleSpec):
        raise ExportError(f"{factory} returned {type(spec).__name__}, not a BundleSpec")
    start = time.perf_counter()
    report = write_bundle(out, spec, overwrite=overwrite, progress=lambda line: _console.print(line))
    table = Table(
        "graph", "output", "max |ONNX Runtime - PyTorch|", title=f"{report.path} ({time.perf_counter() - start:.0f} s)"
    )
    for role, diffs in report.max_diff().items():
        for output, diff in diffs.items():
            table.add_row(role, output, f"{diff:.3g}")
    _console.print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; user errors become one line on stderr and the error's exit code (run_command)."""
    run_command(cli, argv, prog_name="latent-onnx-export")
