"""The fashion-colors recipe: `python -m export_tools.recipes.fashion {train,export,train-evaluator,evaluate}`.

train            train E, G, the MLP head, the captioner and the prior (resumable, see fashion_train)
export           write the bundle (onnx_models/fashion-colors) from a finished training run
train-evaluator  train the independent evaluator CNN used by `evaluate`
evaluate         score samples of a bundle, made through the runtime, against real test images
readme-pictures  docs/images/classes.png and captions.png, made by the runtime from the bundle
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import torch
from PIL import Image

from export_tools import write_atomically
from export_tools.cli import run_command
from export_tools.recipes.evaluator import (
    EvaluationPlan,
    EvaluatorConfig,
    Judge,
    evaluate_bundle,
    make_samples,
    train_evaluator,
)
from export_tools.recipes.fashion_bundle import write_fashion_bundle
from export_tools.recipes.fashion_data import CLASS_NAMES, DATA_DIR
from export_tools.recipes.fashion_train import TrainConfig, Trainer
from latent_onnx import Pipeline
from latent_onnx.contracts import CONDITIONS
from latent_onnx.images import make_grid, save_png


def config_options(function):
    """One click option per TrainConfig field, named --field-name (a flag pair --name / --no-name for a
    bool), defaulting to the dataclass default."""
    for spec in reversed(dataclasses.fields(TrainConfig)):
        name = spec.name.replace("_", "-")
        if str(spec.type) == "bool":
            option = click.option(f"--{name}/--no-{name}", spec.name, default=spec.default, show_default=True)
        else:
            kind = {"int": int, "float": float, "int | None": int}[str(spec.type)]
            option = click.option(f"--{name}", spec.name, type=kind, default=spec.default, show_default=True)
        function = option(function)
    return function


@click.group()
def main() -> None:
    """Train, export and evaluate the coloured Fashion-MNIST bundle."""


@main.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/fashion"),
    show_default=True,
    help="directory of the checkpoint; an existing checkpoint there is resumed",
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=DATA_DIR, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True, help="torch CPU threads")
@config_options
def train(out: Path, data_dir: Path, threads: int, **options) -> None:
    """Train every network of the bundle, resuming from OUT/checkpoint.pt when it exists."""
    torch.set_num_threads(threads)
    progress = Trainer(TrainConfig(**options), out, data_dir, log=lambda line: click.echo(line)).run()
    click.echo(
        "training finished; seconds per stage: "
        + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in progress.seconds.items())
    )


@main.command("train-evaluator")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/evaluator.pt"), show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=DATA_DIR, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads")
@click.option("--epochs", type=int, default=EvaluatorConfig.epochs, show_default=True)
@click.option("--train-limit", type=int, default=None, help="use only the first N training images")
def train_evaluator_command(out: Path, data_dir: Path, threads: int, epochs: int, train_limit: int | None) -> None:
    """Train the independent evaluator (class and colour CNN) that `evaluate` scores samples with."""
    torch.set_num_threads(threads)
    accuracy = train_evaluator(
        out, EvaluatorConfig(epochs=epochs, train_limit=train_limit), data_dir, log=lambda line: click.echo(line)
    )
    click.echo(
        f"evaluator saved to {out}; test accuracy: class {accuracy['class']:.4f}, colour {accuracy['colour']:.4f}"
    )


@main.command()
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path),
    default=Path("runs/fashion"),
    show_default=True,
    help="directory of a finished training run",
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("onnx_models/fashion-colors"), show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an existing bundle directory")
@click.option("--threads", type=int, default=2, show_default=True, help="torch CPU threads")
def export(run_dir: Path, out: Path, overwrite: bool, threads: int) -> None:
    """Export the trained networks, prior and tuned sampler defaults as a bundle (validated graphs)."""
    torch.set_num_threads(threads)
    report = write_fashion_bundle(run_dir, out, overwrite=overwrite, log=lambda line: click.echo(line))
    for role, diffs in report.max_diff().items():
        click.echo(f"{role}: " + ", ".join(f"{name} max|diff|={value:.2e}" for name, value in diffs.items()))
    size = sum(path.stat().st_size for path in out.iterdir())
    click.echo(f"bundle {out}: {size / 1e6:.2f} MB")


def parse_overrides(pairs: tuple[str, ...]) -> dict:
    """("eps1=0.02", "eps1_final=none", "normalize_grad=true", "start=init") -> sampler overrides for the
    runtime: numbers, true/false, none, else the text itself (the runtime checks every value)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"'{pair}' is not KEY=VALUE", param_hint="--set")
        word = value.strip().lower()
        if word in ("true", "false", "none", "null"):
            overrides[key.strip()] = {"true": True, "false": False}.get(word)
        else:
            try:
                overrides[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                overrides[key.strip()] = value.strip()
    return overrides


@main.command()
@click.option(
    "--bundle", type=click.Path(path_type=Path), default=Path("onnx_models/fashion-colors"), show_default=True
)
@click.option("--evaluator", type=click.Path(path_type=Path), default=Path("runs/evaluator.pt"), show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=DATA_DIR, show_default=True)
@click.option("--per-class", type=click.IntRange(2), default=EvaluationPlan.per_class, show_default=True)
@click.option("--per-caption", type=click.IntRange(1), default=EvaluationPlan.per_caption, show_default=True)
@click.option(
    "--composite-per-class", type=click.IntRange(2), default=EvaluationPlan.composite_per_class, show_default=True
)
@click.option("--seed", type=click.IntRange(0), default=EvaluationPlan.seed, show_default=True)
@click.option(
    "--rows",
    default=",".join(EvaluationPlan.rows),
    show_default=True,
    help="comma-separated subset of real,latent,captions,composite,crossing",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="sampler override of the bundle's defaults, e.g. --set start=init --set condition_scale=2 (repeatable)",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="also write the figures here as JSON")
def evaluate(
    bundle: Path,
    evaluator: Path,
    data_dir: Path,
    per_class: int,
    per_caption: int,
    composite_per_class: int,
    seed: int,
    rows: str,
    overrides: tuple[str, ...],
    json_path: Path | None,
) -> None:
    """Score a bundle's samples (made by the runtime) and real test images with the independent evaluator."""
    chosen = tuple(row.strip() for row in rows.split(",") if row.strip())
    unknown = set(chosen) - set(EvaluationPlan.rows)
    if unknown:
        raise click.BadParameter(f"unknown rows {sorted(unknown)}", param_hint="--rows")
    plan = EvaluationPlan(
        per_class=per_class, per_caption=per_caption, composite_per_class=composite_per_class, seed=seed, rows=chosen
    )
    sampler = parse_overrides(overrides)
    pipe = Pipeline.from_bundle(str(bundle))
    # the settings each kind of condition runs with; bad overrides fail here, before any sampling
    configs = {kind: pipe.sampler_config(condition=kind, **sampler).to_dict() for kind in CONDITIONS}
    for kind, config in configs.items():
        click.echo(f"sampler for a {kind}: {config}")
    figures = evaluate_bundle(pipe, Judge.load(evaluator), plan, sampler, data_dir, log=lambda line: click.echo(line))
    if json_path is not None:
        text = (
            json.dumps(
                {
                    "bundle": str(bundle),
                    "sampler_overrides": sampler,
                    "sampler": configs,
                    "plan": dataclasses.asdict(plan),
                    "rows": figures,
                },
                indent=2,
            )
            + "\n"
        )
        write_atomically(json_path, lambda temp: temp.write_text(text))


README_CAPTIONS = [
    "a red sneaker",
    "a pair of blue trousers",
    "an orange bag",
    "a yellow dress",
    "a green pullover",
    "a purple ankle boot",
    "a pink t-shirt",
    "a white coat",
    "a sandal in green",
    "a pair of red sandals",
]


@main.command("readme-pictures")
@click.option(
    "--bundle", type=click.Path(path_type=Path), default=Path("onnx_models/fashion-colors"), show_default=True
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("docs/images"), show_default=True)
@click.option("--columns", type=click.IntRange(1, 32), default=10, show_default=True, help="samples per row")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--scale", type=click.IntRange(1, 8), default=3, show_default=True, help="nearest-neighbour upscaling")
def readme_pictures(bundle: Path, out: Path, columns: int, seed: int, scale: int) -> None:
    """classes.png (one row per class) and captions.png (one row per caption), made by the runtime with the
    bundle's sampler defaults."""
    pipe = Pipeline.from_bundle(str(bundle))
    for name, requests in (
        ("classes", [{"classes": c} for c in CLASS_NAMES]),
        ("captions", [{"caption": c} for c in README_CAPTIONS]),
    ):
        # each row from starts of its own, as `evaluate` makes them: with shared starts, column i of every row
        # would start from the same code, and the colour a start picks would repeat down the column
        pixels = make_samples(pipe, requests, columns, "latent", seed, columns, {})
        grid = make_grid(pixels, columns=columns)
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
        rows = "; ".join(next(iter(request.values())) for request in requests)
        save_png(
            grid, out / f"{name}.png", {"latent-onnx": f"bundle {bundle}, seed {seed}, sampler defaults, rows: {rows}"}
        )
        click.echo(f"wrote {out / name}.png")


if __name__ == "__main__":
    run_command(main)
