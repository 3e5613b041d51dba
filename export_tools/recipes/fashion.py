"""The fashion-colors recipe: `python -m export_tools.recipes.fashion {train,export,train-evaluator,evaluate}`.

train            train E, G, the MLP head, the captioner and the prior (resumable, see fashion_train)
export           write the bundle (onnx_models/fashion-colors) from a finished training run
train-evaluator  train the independent evaluator CNN used by `evaluate`
evaluate         score samples of a bundle, made through the runtime, against real test images
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click
import torch

from export_tools import ExportError
from export_tools.recipes.fashion_data import DATA_DIR
from export_tools.recipes.fashion_train import Trainer, TrainConfig


def config_options(function):
    """One click option per TrainConfig field, named --field-name, defaulting to the dataclass default."""
    for spec in reversed(dataclasses.fields(TrainConfig)):
        kind = {"int": int, "float": float, "int | None": int}[str(spec.type)]
        function = click.option(f"--{spec.name.replace('_', '-')}", spec.name, type=kind, default=spec.default,
                                show_default=True)(function)
    return function


@click.group()
def main() -> None:
    """Train, export and evaluate the coloured Fashion-MNIST bundle."""


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/fashion"), show_default=True,
              help="directory of the checkpoint; an existing checkpoint there is resumed")
@click.option("--data-dir", type=click.Path(path_type=Path), default=DATA_DIR, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True, help="torch CPU threads")
@config_options
def train(out: Path, data_dir: Path, threads: int, **options) -> None:
    """Train every network of the bundle, resuming from OUT/checkpoint.pt when it exists."""
    torch.set_num_threads(threads)
    progress = Trainer(TrainConfig(**options), out, data_dir, log=lambda line: click.echo(line)).run()
    click.echo("training finished; seconds per stage: "
               + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in progress.seconds.items()))


def run() -> None:
    """Entry point: run the click group and turn export errors into one line and an exit code."""
    try:
        main(standalone_mode=False)
    except ExportError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)


if __name__ == "__main__":
    run()
