"""The `latent-onnx` command: a thin layer over the Python API (click + rich).

Every error a user can cause ends as one line on stderr and a non-zero exit code, with nothing written.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shlex
import sys
from pathlib import Path

import click
import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import __version__
from .bundle import BUNDLE_ENV, DEFAULT_BUNDLE, load_bundle
from .conditioning import ClassIndex
from .errors import InputError, LatentOnnxError, OutputError
from .images import PNG_TEXT_KEY, check_new_files, check_output_dir, make_grid, save_gif, save_png
from .pipeline import MAX_SAMPLES, PATHS, Pipeline
from .sampler import STARTS
from .sessions import DEVICES

TRAJECTORY_FRAMES = 60  # about this many frames (at most 2 more) in a --save-trajectory GIF
MIN_GIF_SIZE = 128  # GIF frames are scaled up (nearest) to at least this many pixels high


def _fail(message: str, code: int):
    click.echo(f"latent-onnx: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class _Cli(click.Group):
    """Turns every user error (click's and ours) into one line on stderr and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            result = super().main(args, prog_name or "latent-onnx", complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as error:  # bare `latent-onnx`: the help, as click shows it
            click.echo(error.format_message(), err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            _fail(error.format_message(), error.exit_code)
        except LatentOnnxError as error:
            _fail(str(error), error.exit_code)
        except (click.Abort, KeyboardInterrupt):
            _fail("interrupted", 130)
        sys.exit(result if isinstance(result, int) else 0)


_bundle_option = click.option(
    "--bundle", "bundle", default=None, metavar="PATH|NAME",
    help=f"Bundle directory or shipped bundle name (default: ${BUNDLE_ENV}, else {DEFAULT_BUNDLE}).",
)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="latent-onnx")
def cli():
    """Conditional image generation by Langevin sampling of a generator's latent code (ONNX Runtime)."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "sample"


def _reproduce_command(bundle_arg: str | None, result, index: int) -> str:
    o, c = result.options, result.config
    words = ["latent-onnx", "generate"]
    if bundle_arg:
        words += ["--bundle", bundle_arg]
    words += ["--class", o.classes] if o.classes is not None else ["--caption", o.caption]
    if o.preset:
        words += ["--preset", o.preset]
    words += ["--seed", str(o.seed), "--start-index", str(index), "-n", "1", "--steps", str(c.steps),
              "--eps1", repr(c.eps1), "--eps2", repr(c.eps2), "--prior-weight", repr(c.prior_weight),
              "--condition-scale", repr(c.condition_scale), "--start", c.start, "--path", o.path]
    return shlex.join(words)


def _png_text(bundle, bundle_arg, result, index: int, logp: float, init_image_sha: str | None) -> dict[str, str]:
    parameters = {
        "software": f"latent-onnx {__version__}", "bundle": bundle.name, "bundle_manifest_sha256": bundle.manifest_sha256,
        "classes": result.options.classes, "caption": result.options.caption, "seed": result.options.seed,
        "index": index, "path": result.options.path, "preset": result.options.preset,
        "sampler": result.config.to_dict(), "init_image_sha256": init_image_sha, "logp": logp,
    }
    return {
        PNG_TEXT_KEY: json.dumps(parameters, sort_keys=True),
        "Software": f"latent-onnx {__version__}",
        "Comment": _reproduce_command(bundle_arg, result, index),
    }


def _upscaled(images: np.ndarray) -> list[Image.Image]:
    factor = max(1, -(-MIN_GIF_SIZE // images.shape[1]))
    return [Image.fromarray(image).resize((image.shape[1] * factor, image.shape[0] * factor), Image.Resampling.NEAREST) for image in images]


@cli.command()
@click.option("--class", "classes", default=None, metavar="SPEC", help='Class name or index, or a mix: "sneaker:0.7,sandal:0.3" (negative weights push away).')
@click.option("--caption", default=None, help="A caption in the bundle's vocabulary (instead of --class).")
@click.option("-n", "n", type=int, default=4, show_default=True, help="Number of images.")
@click.option("--seed", type=int, default=None, help="Random seed (default: drawn and reported).")
@click.option("--start-index", type=int, default=0, show_default=True, help="Index of the first sample (sample i depends on seed and i only).")
@click.option("--steps", type=int, default=None, help="SGLD steps (default: the bundle's).")
@click.option("--eps1", type=float, default=None, help="Step size on the gradient (default: the bundle's).")
@click.option("--eps2", type=float, default=None, help="Noise variance per step (default: the bundle's).")
@click.option("--prior-weight", type=float, default=None, help="Weight of the prior gradient (default: the bundle's).")
@click.option("--condition-scale", type=float, default=None, help="Weight of the class/caption gradient (default: the bundle's).")
@click.option("--start", type=click.Choice(STARTS), default=None, help="Chain start: the bundle's init, or prior components weighted by the condition (default: the bundle's).")
@click.option("--preset", default=None, help="A named sampler preset of the bundle (e.g. paper).")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Chains run together.")
@click.option("--path", "path", type=click.Choice(PATHS), default="latent", show_default=True, help="Sample through the latent MLP or the composite graph.")
@click.option("--init-image", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Start from this image through the bundle's encoder.")
@_bundle_option
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out"), show_default=True, help="Output folder.")
@click.option("--grid", is_flag=True, help="Also write all images as one grid PNG.")
@click.option("--save-trajectory", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE.gif", help="Write an animated GIF of the first chain.")
@click.option("--overwrite", is_flag=True, help="Replace existing files of the same name.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object describing the files and parameters.")
def generate(classes, caption, n, seed, start_index, steps, eps1, eps2, prior_weight, condition_scale, start, preset, batch_size, path,
             init_image, bundle, device, threads, out_dir, grid, save_trajectory, overwrite, as_json):
    """Generate images of a class (or mix of classes) or of a caption."""
    if (classes is None) == (caption is None):
        raise InputError("give exactly one of --class or --caption")
    if not 1 <= n <= MAX_SAMPLES:
        raise InputError(f"-n must be from 1 to {MAX_SAMPLES}, not {n}")
    seed = secrets.randbits(32) if seed is None else seed
    if seed < 0 or start_index < 0:
        raise InputError("--seed and --start-index must be >= 0")
    stem = f"{_slug(classes if classes is not None else caption)}-s{seed}"
    files = [out_dir / f"{stem}-{start_index + i:04d}.png" for i in range(n)]
    grid_file = out_dir / f"{stem}-{start_index:04d}-grid.png" if grid else None
    extra_files = [p for p in (grid_file, save_trajectory) if p is not None]
    check_output_dir(out_dir)
    if save_trajectory is not None:
        check_output_dir(save_trajectory.parent)
    check_new_files(files + extra_files, overwrite)
    if len(set(files + extra_files)) != len(files + extra_files):
        raise OutputError("--save-trajectory names a file the images would use; choose another name")

    init = init_sha = None
    if init_image is not None:
        try:
            init = Image.open(init_image)
            init.load()
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read --init-image {init_image}: {error}") from None
        init_sha = hashlib.sha256(init_image.read_bytes()).hexdigest()

    pipe = Pipeline.from_bundle(bundle, device=device, threads=threads)
    console = Console(stderr=True)
    show_progress = not as_json and console.is_terminal
    sampler_overrides = dict(steps=steps, eps1=eps1, eps2=eps2, prior_weight=prior_weight,
                             condition_scale=condition_scale, start=start)
    config = pipe.sampler_config(preset, **sampler_overrides)
    frame_every = -(-config.steps // TRAJECTORY_FRAMES)
    frames: list[np.ndarray] = []

    with Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=not show_progress) as progress:
        task = progress.add_task("sampling", total=None)

        def on_step(step: int, total: int, z: np.ndarray):
            progress.update(task, completed=step, total=total)
            first_chain = step <= config.steps
            if save_trajectory is not None and first_chain and (step % frame_every == 0 or step in (1, config.steps)):
                frames.append(z[0].copy())

        result = pipe.generate(
            classes=classes, caption=caption, n=n, seed=seed, start_index=start_index, batch_size=batch_size,
            preset=preset, **sampler_overrides, path=path,
            init_image=init, callback=on_step,
        )

    for file, index, image, logp in zip(files, result.indices, result.images, result.logp):
        save_png(image, file, _png_text(pipe.bundle, bundle, result, index, float(logp), init_sha))
    if grid_file is not None:
        save_png(make_grid(result.pixels), grid_file, {PNG_TEXT_KEY: json.dumps({"seed": seed, "files": [f.name for f in files]})})
    if save_trajectory is not None:
        save_gif(_upscaled(pipe.decode(np.stack(frames))), save_trajectory)

    summary = {
        "bundle": pipe.bundle.name, "bundle_path": str(pipe.bundle.root), "device": pipe.runner("generator").provider,
        "seed": seed, "options": result.options.describe(), "sampler": result.config.to_dict(),
        "samples": [{"file": str(f), "index": i, "logp": float(lp)} for f, i, lp in zip(files, result.indices, result.logp)],
        "grid": str(grid_file) if grid_file else None, "trajectory": str(save_trajectory) if save_trajectory else None,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        out = Console(soft_wrap=True)
        out.print(f"wrote {n} image(s) to {out_dir}/ (bundle {pipe.bundle.name}, seed {seed}, {config.steps} steps)")
        for extra in extra_files:
            out.print(f"wrote {extra}")


@cli.command()
@_bundle_option
@click.option("--search", default=None, metavar="TEXT", help="Only classes with a name containing TEXT.")
def classes(bundle, search):
    """List the bundle's classes (index and names)."""
    loaded = load_bundle(bundle)
    if not loaded.classes:
        raise InputError(f"bundle '{loaded.name}' has no classes")
    index = ClassIndex(loaded.classes)
    found = index.search(search) if search else range(len(loaded.classes))
    if not found:
        raise InputError(f"no class name contains '{search}'")
    for k in found:
        click.echo(f"{k}\t{', '.join(loaded.classes[k])}")


@cli.command()
@click.argument("bundle", required=False, metavar="[BUNDLE]")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(bundle, as_json):
    """Check a bundle (every file and graph) and describe it."""
    loaded = load_bundle(bundle)
    runners = Pipeline.from_bundle(loaded, device="cpu").open_all()
    graphs = {
        role: {"file": ref.file, "bytes": (loaded.root / ref.file).stat().st_size, "checked": role in runners}
        for role, ref in loaded.graphs.items()
    }
    description = {
        "name": loaded.name, "path": str(loaded.root), "description": loaded.description, "license": loaded.license,
        "latent_dim": loaded.latent_dim, "prior": loaded.prior.describe(), "init": loaded.init.describe(),
        "clip": list(loaded.clip) if loaded.clip else None, "image": {"height": loaded.image_hw[0], "width": loaded.image_hw[1]},
        "classes": len(loaded.classes or []), "vocabulary": len(loaded.vocabulary or []), "max_tokens": loaded.max_tokens,
        "graphs": graphs, "sampler": loaded.sampler, "presets": loaded.presets, "provenance": loaded.provenance,
        "manifest_sha256": loaded.manifest_sha256,
    }
    if as_json:
        click.echo(json.dumps(description))
        return
    out = Console(soft_wrap=True)
    out.print(f"[bold]{loaded.name}[/bold]  {loaded.description}")
    out.print(f"path: {loaded.root}   license: {loaded.license or '-'}")
    out.print(f"latent: {loaded.latent_dim}-d, prior {description['prior']}, init {description['init']}, clip {description['clip']}")
    out.print(f"image: {loaded.image_hw[0]}x{loaded.image_hw[1]} RGB")
    names = loaded.class_names
    if names:
        out.print(f"classes ({len(names)}): {', '.join(names[:12])}{', ...' if len(names) > 12 else ''}")
    if loaded.vocabulary:
        out.print(f"captions: {len(loaded.vocabulary)} words, at most {loaded.max_tokens - 1} per caption")
    for role, entry in graphs.items():
        out.print(f"graph {role}: {entry['file']} ({entry['bytes'] / 1e6:.2f} MB, verified and checked)")
    out.print(f"sampler defaults: {json.dumps(loaded.sampler)}")
    if loaded.presets:
        out.print(f"presets: {json.dumps(loaded.presets)}")
    if loaded.provenance:
        out.print(f"provenance: {json.dumps(loaded.provenance)}")


def main(argv: list[str] | None = None):
    """Entry point of the `latent-onnx` command."""
    cli.main(args=argv, prog_name="latent-onnx")
