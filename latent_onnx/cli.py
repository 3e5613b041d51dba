"""The `latent-onnx` command: a thin layer over the Python API (click + rich).

Every error a user can cause ends as one line on stderr and a non-zero exit code, with nothing written.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import signal
import sys
import threading
from dataclasses import fields, replace
from pathlib import Path
from typing import NoReturn

import click
import numpy as np
from PIL import Image

from . import __version__
from .bundle import BUNDLE_ENV, DEFAULT_BUNDLE, load_bundle
from .conditioning import ClassIndex
from .dataset import BACKENDS as DATASET_BACKENDS
from .dataset import FORMATS as DATASET_FORMATS
from .errors import InputError, LatentOnnxError, OutputError, command_line, exit_with_error, printable
from .images import (
    GUTTER_GREY,
    PNG_TEXT_KEY,
    RESAMPLES,
    check_output_dir,
    make_grid,
    read_image,
    save_gif,
    save_png,
    stored_parameters,
    upscaled,
)
from .metadata import parameters, png_text
from .pipeline import MAX_SAMPLES, PATHS, GenerateOptions, Pipeline
from .sampler import SamplerConfig
from .sessions import DEVICES, probe_bundle

TRAJECTORY_FRAMES = 60  # about this many frames (at most 2 more) in a --save-trajectory GIF
MIN_GIF_SIZE = 128  # GIF frames are scaled up (by --upscale, or more) to at least this many pixels high
MAX_UPSCALE = 64


EXIT_CODES = """Exit codes: 0 done; 2 bad input; 3 bundle missing, damaged or tampered with; 4 device unavailable;
5 output not writable or would be overwritten; 7 sampling diverged; 130 interrupted; 143 terminated (SIGTERM)."""

GENERATE_EPILOG = (
    """\b
Examples:
  latent-onnx generate --class sneaker -n 8 --grid
  latent-onnx generate --class "sneaker:0.7,sandal:0.3" --seed 1
  latent-onnx generate --caption "a red sneaker" --save-trajectory chain.gif
  latent-onnx generate --class sneaker --then bag --switch-at 100 --save-trajectory morph.gif
  latent-onnx generate --class bag --sampler mala
  latent-onnx generate --init-image shoe.png --class "ankle boot"

\b
"""
    + EXIT_CODES
)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def run_command(
    command: click.Command, args=None, prog_name: str | None = None, *, program: str | None = None, **extra
) -> NoReturn:
    """Run a click command and exit with its result: every user error (click's, and LatentOnnxError, the exporter's
    included) is one line on stderr, `PROG: error: ...`, with its exit code; an interrupt exits 130.
    PROG is `program`, else `prog_name`, else the script's name. The error printer of latent-onnx and latent-onnx-export."""
    prog = program or prog_name or Path(sys.argv[0]).name or command.name
    _echo_warnings(prog)
    try:
        result = click.Command.main(command, args, prog_name, standalone_mode=False, **extra)
    except _NO_ARGS_IS_HELP as error:  # a bare group: the help, as click shows it
        click.echo(error.format_message(), err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        exit_with_error(prog, error.format_message(), error.exit_code)
    except LatentOnnxError as error:
        exit_with_error(prog, str(error), error.exit_code)
    except (click.Abort, KeyboardInterrupt):
        exit_with_error(prog, "interrupted", 130)
    sys.exit(result if isinstance(result, int) else 0)


class _EchoHandler(logging.Handler):
    """Prints the runtime's log records as the command's own lines: `PROG: warning: message` on stderr
    (a logged exception, such as the server's internal errors, keeps its traceback below the line)."""

    def __init__(self, prog: str):
        super().__init__(logging.WARNING)
        self.prog = prog

    def emit(self, record: logging.LogRecord) -> None:
        line = command_line(self.prog, record.levelname.lower(), record.getMessage())
        if record.exc_info:
            line += "\n" + logging.Formatter().formatException(record.exc_info)
        click.echo(line, err=True)


def _echo_warnings(prog: str) -> None:
    """Route the `latent_onnx` loggers' warnings to stderr as one command line each (once per process)."""
    logger = logging.getLogger("latent_onnx")
    if not any(isinstance(handler, _EchoHandler) for handler in logger.handlers):
        logger.addHandler(_EchoHandler(prog))
        logger.propagate = False


class _Cli(click.Group):
    """Turns every user error (click's and ours) into one line on stderr and an exit code (run_command)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        run_command(self, args, prog_name or "latent-onnx", program="latent-onnx", complete_var=complete_var, **extra)


_bundle_option = click.option(
    "--bundle",
    "bundle",
    default=None,
    metavar="PATH|NAME",
    help=f"Bundle directory or shipped bundle name (default: ${BUNDLE_ENV}, else {DEFAULT_BUNDLE}).",
)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="latent-onnx")
def cli():
    """Conditional image generation by Langevin sampling of a generator's latent code (ONNX Runtime)."""


def _stem(condition: str) -> str:
    """A file-name stem for a condition; a short hash keeps specs that slug alike apart ("bag:1" vs "bag:-1")."""
    slug = re.sub(r"[^a-z0-9]+", "-", condition.lower()).strip("-")[:48] or "sample"
    if re.fullmatch(r"[a-z0-9]+( [a-z0-9]+)*", condition.strip().lower()):
        return slug
    return f"{slug}-{hashlib.sha256(condition.encode()).hexdigest()[:6]}"


def _sampler_options(function):
    """One option per SamplerConfig field that declares a flag (the one declaration of every setting)."""
    for spec in reversed(fields(SamplerConfig)):
        flag, help_text, choices = spec.metadata["flag"], spec.metadata["help"], spec.metadata["choices"]
        if flag is None:
            continue
        if spec.type in ("bool", bool):
            function = click.option(
                f"{flag}/--no-{flag[2:]}", spec.name, default=None, help=help_text + " (default: the bundle's)"
            )(function)
            continue
        kind = click.Choice(choices) if choices else {"int": int}.get(str(spec.type), float)
        function = click.option(flag, spec.name, type=kind, default=None, help=help_text + " (default: the bundle's)")(
            function
        )
    return function


def _output_path(text: str, out_dir: Path) -> Path:
    """A user's file name: `~` expanded; a bare name (no folder separator) goes into the --out folder, a path
    (`./chain.gif`, `sub/chain.gif`, `/tmp/chain.gif`) is taken as given."""
    path = Path(text).expanduser()
    return path if "/" in text or os.sep in text or text.startswith("~") else out_dir / path


class _Stopped(LatentOnnxError):
    """A run stopped by SIGINT (exit 130) or SIGTERM (exit 143)."""

    def __init__(self, signum: int):
        super().__init__("interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)")
        self.exit_code = 128 + signum


class _CleanStop:
    """While a run writes files: the first SIGINT or SIGTERM asks for a clean stop, taken at the next step or
    file (`check`), so no write is cut short; a second SIGINT interrupts at once."""

    def __enter__(self) -> _CleanStop:
        self.signum, self._previous = None, {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise _Stopped(self.signum)

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _same_parameters(stored: dict | None, expected: dict) -> bool:
    """Whether a file's stored parameters are `expected` (logp, an outcome, left out)."""
    return stored is not None and {k: v for k, v in stored.items() if k != "logp"} == expected


def _index_ranges(indices: list[int]) -> list[range]:
    """Consecutive runs of sorted sample indices."""
    ranges: list[range] = []
    for index in indices:
        if ranges and ranges[-1].stop == index:
            ranges[-1] = range(ranges[-1].start, index + 1)
        else:
            ranges.append(range(index, index + 1))
    return ranges


def _written_list(files: dict[int, Path], written: list[int]) -> str:
    """Exactly which of `files` (index -> path) were written, as name ranges."""
    parts = [
        files[r.start].name if len(r) == 1 else f"{files[r.start].name} .. {files[r[-1]].name}"
        for r in _index_ranges(sorted(written))
    ]
    return ", ".join(parts)


def _json_safe(value):
    """`value` with every non-finite float replaced by None, so that JSON output never holds a bare NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _terminal_console():
    """A rich Console on stderr when stderr is a terminal (rich decides), else None. rich (about 20 ms of
    imports, a tenth of a cold start) is only loaded where there may be a bar to draw."""
    if not (sys.stderr.isatty() or "FORCE_COLOR" in os.environ or os.environ.get("TTY_COMPATIBLE") == "1"):
        return None
    from rich.console import Console

    console = Console(stderr=True, markup=False, highlight=False)
    return console if console.is_terminal else None


def _progress_bar(console):
    """generate's progress bar on `console` (images done of the total, time left)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TextColumn("images"), TimeRemainingColumn())
    return Progress(*columns, console=console, transient=True)


class _NoBar:
    """The progress bar's calls, doing nothing (no terminal to draw on)."""

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass


def _echo_json(value) -> None:
    click.echo(json.dumps(_json_safe(value), allow_nan=False))


@cli.command(epilog=GENERATE_EPILOG)
@click.option(
    "--class",
    "classes",
    default=None,
    metavar="SPEC",
    help='Class name or index, or a mix: "sneaker:0.7,sandal:0.3" (negative weights push away).',
)
@click.option("--caption", default=None, help="A caption in the bundle's vocabulary (instead of --class).")
@click.option(
    "--then",
    default=None,
    metavar="SPEC",
    help="Switch the chains to this class spec (or caption, for --caption runs) mid-run.",
)
@click.option(
    "--switch-at", type=int, default=None, help="The step at which --then takes over (default: half the steps)."
)
@click.option("-n", "n", type=int, default=4, show_default=True, help="Number of images.")
@click.option("--seed", type=int, default=None, help="Random seed (default: drawn and reported).")
@click.option(
    "--start-index",
    type=int,
    default=0,
    show_default=True,
    help="Index of the first sample (sample i depends on seed and i only).",
)
@_sampler_options
@click.option("--preset", default=None, help="A named sampler preset of the bundle (e.g. paper).")
@click.option(
    "--batch-size", type=int, default=16, show_default=True, help="Chains run together (results do not depend on it)."
)
@click.option(
    "--path",
    "path",
    type=click.Choice(PATHS),
    default="latent",
    show_default=True,
    help="Sample through the latent MLP or the composite graph.",
)
@click.option(
    "--init-image",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Start every chain at this image's code (the bundle's encoder).",
)
@_bundle_option
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out"),
    show_default=True,
    help="Output folder.",
)
@click.option(
    "--upscale",
    type=click.IntRange(1, MAX_UPSCALE),
    default=1,
    show_default=True,
    help="Scale the images up by this integer factor (the grid and the GIF too).",
)
@click.option(
    "--resample",
    type=click.Choice(tuple(RESAMPLES)),
    default="nearest",
    show_default=True,
    help="The filter of --upscale.",
)
@click.option("--grid", is_flag=True, help="Also write all images as one grid PNG (grey gutters).")
@click.option(
    "--save-trajectory",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE.gif",
    help="Write an animated GIF of the first chain (a bare name goes into --out).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing files made with other parameters.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object describing the files and parameters.")
def generate(
    classes,
    caption,
    then,
    switch_at,
    n,
    seed,
    start_index,
    preset,
    batch_size,
    path,
    init_image,
    bundle,
    device,
    threads,
    out_dir,
    upscale,
    resample,
    grid,
    save_trajectory,
    overwrite,
    as_json,
    **sampler,
):
    """Generate images of a class (or mix of classes) or of a caption.

    Each batch's PNGs are written as it finishes. A file that already exists with the same generation
    parameters is kept (so the same command again resumes a stopped run); one with other parameters is
    refused unless --overwrite.
    """
    options = GenerateOptions(
        classes=classes,
        caption=caption,
        then=then,
        switch_at=switch_at,
        n=n,
        seed=seed,
        start_index=start_index,
        batch_size=batch_size,
        preset=preset,
        path=path,
    ).updated(**sampler)
    out_dir = out_dir.expanduser()
    check_output_dir(out_dir)
    trajectory = _output_path(save_trajectory, out_dir) if save_trajectory is not None else None
    if trajectory is not None:
        check_output_dir(trajectory.parent)
    init_sha = None
    if init_image is not None:
        init, init_sha = read_image(init_image, "--init-image")
        options = replace(options, init_image=init)

    pipe = Pipeline.from_bundle(bundle, device=device, threads=threads)
    options, config = pipe.resolve(options)  # checked, seed drawn: what the files record
    seed = options.seed
    scaling = {"upscale": upscale, "resample": resample}
    expected = functools.partial(parameters, pipe.bundle, options, config, init_image_sha256=init_sha, **scaling)
    stem = f"{_stem(classes if classes is not None else caption)}-s{seed}"
    files = {i: out_dir / f"{stem}-{i:04d}.png" for i in range(start_index, start_index + n)}
    grid_file = out_dir / f"{stem}-{start_index:04d}-grid.png" if grid else None
    grid_parameters = {"grid": [f.name for f in files.values()], **scaling}
    gif_scale = max(upscale, -(-MIN_GIF_SIZE // pipe.bundle.image_hw[0]))
    gif_parameters = {"trajectory": expected(start_index), "frames": TRAJECTORY_FRAMES, "scale": gif_scale}
    extra_files = [p for p in (grid_file, trajectory) if p is not None]
    resolved = [p.resolve() for p in [*files.values(), *extra_files]]
    if len(set(resolved)) != len(resolved):
        raise OutputError("--save-trajectory names a file the images or the grid would use; choose another name")

    kept: dict[int, float | None] = {}  # index -> the logp its existing file records
    for index, file in files.items():
        if file.exists() or file.is_symlink():
            stored = stored_parameters(file)
            if _same_parameters(stored, expected(index)):
                kept[index] = stored.get("logp") if isinstance(stored.get("logp"), float) else None
            else:
                _refuse_unless(overwrite, file)
    for extra, wanted in ((grid_file, grid_parameters), (trajectory, gif_parameters)):
        if extra is not None and (extra.exists() or extra.is_symlink()) and stored_parameters(extra) != wanted:
            _refuse_unless(overwrite, extra)
    make_gif = trajectory is not None and not (trajectory.exists() and stored_parameters(trajectory) == gif_parameters)
    to_make = [i for i in files if i not in kept]
    to_run = sorted({*to_make, *([start_index] if make_gif else [])})

    console = None if as_json else _terminal_console()
    show_bar, show_lines = console is not None, not as_json and console is None
    batches_total = sum(-(-len(r) // batch_size) for r in _index_ranges(to_run))
    frame_every = max(1, -(-config.steps // TRAJECTORY_FRAMES))
    frames: list[np.ndarray] = []
    made: dict[int, tuple[float, float]] = {}  # index -> (logp, acceptance)
    written: list[int] = []
    try:
        with (
            _CleanStop() as stop,
            _progress_bar(console) if show_bar else contextlib.nullcontext(_NoBar()) as progress,
        ):
            task = progress.add_task("sampling", total=len(to_make))

            def on_step(step: int, total: int, z: np.ndarray):
                stop.check()
                first_chain = make_gif and not made and step <= config.steps  # the first batch's first chain
                if first_chain and (step % frame_every == 0 or step in (1, config.steps)):
                    frames.append(z[0].copy())

            batches_done = 0
            for group in _index_ranges(to_run):
                group_options = replace(options, start_index=group.start, n=len(group), callback=on_step)
                for batch in pipe.iter_batches(group_options):
                    if make_gif and not frames:  # no steps: the start is the one frame
                        frames.append(batch.z[0])
                    for row, index in enumerate(batch.indices):
                        made[index] = (float(batch.logp[row]), float(batch.acceptance[row]))
                        if index in kept:
                            continue
                        stop.check()
                        save_png(
                            upscaled(batch.images[row], upscale, resample),
                            files[index],
                            png_text(
                                pipe.bundle,
                                batch,
                                row,
                                init_image=_init_ref(init_image),
                                init_image_sha256=init_sha,
                                **scaling,
                            ),
                        )
                        written.append(index)
                    batches_done += 1
                    progress.update(task, completed=len(written))
                    if show_lines:
                        click.echo(
                            f"latent-onnx: batch {batches_done} of {batches_total} done, {len(written)} of "
                            f"{len(to_make)} image(s) written",
                            err=True,
                        )
            stop.check()
            if grid_file is not None:
                pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files.values()])
                save_png(
                    make_grid(pixels, gap=max(2, upscale), background=GUTTER_GREY),
                    grid_file,
                    {PNG_TEXT_KEY: json.dumps(grid_parameters)},
                )
            if make_gif:
                images = [
                    upscaled(Image.fromarray(image), gif_scale, resample) for image in pipe.decode(np.stack(frames))
                ]
                save_gif(images, trajectory, comment=json.dumps(gif_parameters))
    except (LatentOnnxError, KeyboardInterrupt) as error:
        stopped = error if isinstance(error, LatentOnnxError) else _Stopped(signal.SIGINT)
        what = (
            f"wrote {len(written)} of {len(to_make)} image(s) to {out_dir}{os.sep}: {_written_list(files, written)}"
            if written
            else "no image was written"
        )
        if written or kept:
            what += "; the same command again makes the rest (files with the same parameters are kept)"
        raise _with_note(stopped, what) from None

    logps = {i: made[i][0] if i in made else kept.get(i) for i in files}
    summary = {
        "bundle": pipe.bundle.name,
        "bundle_path": str(pipe.bundle.root),
        "device": pipe.runner("generator").provider,
        "seed": seed,
        "options": options.describe(),
        "sampler": config.to_dict(),
        **scaling,
        "samples": [
            {
                "file": str(f),
                "index": i,
                "logp": logps[i],
                "acceptance": made[i][1] if i in written else None,
                "kept": i in kept,
            }
            for i, f in files.items()
        ],
        "grid": str(grid_file) if grid_file else None,
        "trajectory": str(trajectory) if trajectory else None,
    }
    if as_json:
        _echo_json(summary)
        return
    accept = ""
    if config.method == "mala" and config.steps and written:
        accept = f", mala acceptance {np.mean([made[i][1] for i in written]):.2f}"
    kept_note = f", kept {len(kept)} already there" if kept else ""
    click.echo(
        printable(
            f"wrote {len(written)} image(s) to {out_dir}{os.sep}{kept_note} (bundle {pipe.bundle.name}, "
            f"seed {seed}, {config.steps} {config.method} steps{accept})"
        )
    )
    for extra in [p for p in (grid_file, trajectory if make_gif else None) if p is not None]:
        click.echo(printable(f"wrote {extra}"))
    if trajectory is not None and not make_gif:
        click.echo(printable(f"kept {trajectory} (already there)"))


def _refuse_unless(overwrite: bool, path: Path) -> None:
    """OutputError for an existing file made otherwise, unless --overwrite (a folder is always refused)."""
    if path.is_dir():
        raise OutputError(f"{path} is a folder; choose another --out folder")
    if not overwrite:
        raise OutputError(
            f"{path} already exists with other generation parameters; pass --overwrite or choose another --out folder"
        )


def _with_note(error: LatentOnnxError, note: str) -> LatentOnnxError:
    """The same kind of error (and exit code), its message followed by `note`."""
    noted = LatentOnnxError(f"{error}; {note}")
    noted.exit_code = error.exit_code
    return noted


def _init_ref(path: Path | None) -> str | None:
    return str(path.expanduser().resolve()) if path is not None else None


@cli.command()
@_bundle_option
@click.option("--search", default=None, metavar="TEXT", help="Only classes with a name containing TEXT.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the bundle and its classes.")
def classes(bundle, search, as_json):
    """List the bundle's classes (index and names)."""
    loaded = load_bundle(bundle)
    if not loaded.classes:
        raise InputError(f"bundle '{loaded.name}' has no classes")
    index = ClassIndex(loaded.classes)
    found = index.search(search) if search else range(len(loaded.classes))
    if not found and not as_json:
        raise InputError(f"no class name contains '{search}'")
    if as_json:
        _echo_json({"bundle": loaded.name, "classes": [{"index": k, "names": loaded.classes[k]} for k in found]})
        return
    for k in found:
        click.echo(f"{k}\t{printable(', '.join(loaded.classes[k]))}")


@cli.command()
@click.argument("bundle_argument", required=False, metavar="[BUNDLE]")
@_bundle_option
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(bundle_argument, bundle, as_json):
    """Check a bundle (every file, and every graph run once on a probe input) and describe it."""
    if bundle_argument is not None and bundle is not None and bundle_argument != bundle:
        raise InputError(f"two bundles given: {bundle_argument} and --bundle {bundle}; give one")
    loaded = load_bundle(bundle if bundle is not None else bundle_argument)
    probe_bundle(loaded)
    graphs = {
        role: {"file": ref.file, "bytes": (loaded.root / ref.file).stat().st_size, "checked": True}
        for role, ref in loaded.graphs.items()
    }
    description = {
        "name": loaded.name,
        "path": str(loaded.root),
        "description": loaded.description,
        "license": loaded.license,
        "latent_dim": loaded.latent_dim,
        "prior": loaded.prior.describe(),
        "init": loaded.init.describe(),
        "clip": list(loaded.clip) if loaded.clip else None,
        "image": {"height": loaded.image_hw[0], "width": loaded.image_hw[1]},
        "classes": len(loaded.classes or []),
        "vocabulary": len(loaded.vocabulary or []),
        "max_tokens": loaded.max_tokens,
        "graphs": graphs,
        "sampler": loaded.sampler,
        "sampler_by_condition": loaded.sampler_by_condition,
        "presets": loaded.presets,
        "provenance": loaded.provenance,
        "manifest_sha256": loaded.manifest_sha256,
    }
    if as_json:
        _echo_json(description)
        return
    lines = [
        f"{loaded.name}  {loaded.description}",
        f"path: {loaded.root}   license: {loaded.license or '-'}",
        f"latent: {loaded.latent_dim}-d, prior {description['prior']}, init {description['init']}, clip {description['clip']}",
        f"image: {loaded.image_hw[0]}x{loaded.image_hw[1]} RGB",
    ]
    names = loaded.class_names
    if names:
        lines.append(f"classes ({len(names)}): {', '.join(names[:12])}{', ...' if len(names) > 12 else ''}")
    if loaded.vocabulary:
        lines.append(f"captions: {len(loaded.vocabulary)} words, at most {loaded.max_tokens - 1} per caption")
    lines += [
        f"graph {role}: {entry['file']} ({entry['bytes'] / 1e6:.2f} MB, sha256 verified, contract checked,"
        " ran on a probe input)"
        for role, entry in graphs.items()
    ]
    lines.append(f"sampler defaults: {json.dumps(loaded.sampler)}")
    lines += [f"  for a {kind}: {json.dumps(values)}" for kind, values in loaded.sampler_by_condition.items()]
    if loaded.presets:
        lines.append(f"presets: {json.dumps(loaded.presets)}")
    if loaded.provenance:
        lines.append(f"provenance: {json.dumps(loaded.provenance, ensure_ascii=False)}")
    for line in lines:
        click.echo(printable(line))


DATASET_EPILOG = """\b
Examples:
  latent-onnx dataset fashion/ --per-class 1000 --workers 2
  latent-onnx dataset shoes/ --classes sneaker,sandal,9 --per-class 500 --format webdataset
  latent-onnx dataset big/ --per-class 100000 --backend ray --ray-address 10.0.0.1:6379 --workers 64

\b
The same command again resumes a stopped run (finished shards are verified and kept).
""" + EXIT_CODES.replace(
    "7 sampling diverged;", "7 sampling diverged; 8 a worker died twice on one shard, or the Ray cluster failed;"
)


@cli.command(epilog=DATASET_EPILOG)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@_bundle_option
@click.option(
    "--classes",
    default=None,
    metavar="all|NAME,...",
    help="all, or class names or indices separated by commas; one label each (default: all, unless --captions).",
)
@click.option(
    "--captions",
    "captions_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Captions, one per line (# comments skipped); one label each.",
)
@click.option("--per-class", type=int, required=True, help="Images per class (or caption).")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Dataset seed (each condition gets its own seed from it)."
)
@click.option(
    "--shard-size",
    type=int,
    default=1000,
    show_default=True,
    help="Images per shard (the unit of work and of resuming).",
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(DATASET_FORMATS),
    default="imagefolder",
    show_default=True,
    help="imagefolder (a folder per label and metadata.jsonl) or webdataset (tar shards).",
)
@_sampler_options
@click.option("--preset", default=None, help="A named sampler preset of the bundle (e.g. paper).")
@click.option(
    "--backend",
    type=click.Choice(DATASET_BACKENDS),
    default="local",
    show_default=True,
    help="Local worker processes, or actors on a Ray cluster.",
)
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes (local) or actors (ray).")
@click.option(
    "--ray-address", default=None, metavar="HOST:PORT", help="A running Ray cluster (default: start a local one)."
)
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads per worker (default: cores // workers).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option(
    "--batch-size", type=int, default=16, show_default=True, help="Chains run together (results do not depend on it)."
)
@click.option("--overwrite", is_flag=True, help="Replace a dataset with other settings in OUT.")
def dataset(
    out,
    bundle,
    classes,
    captions_file,
    per_class,
    seed,
    shard_size,
    format_,
    preset,
    backend,
    workers,
    ray_address,
    threads,
    device,
    batch_size,
    overwrite,
    **sampler,
):
    """Write a labelled dataset of generated images to OUT, sharded and resumable."""
    from rich.console import Console

    from .dataset import ConsoleProgress, DatasetSettings, RunOptions, read_captions, write_dataset

    settings = DatasetSettings(
        bundle=bundle,
        classes=classes,
        per_class=per_class,
        seed=seed,
        shard_size=shard_size,
        captions=read_captions(captions_file) if captions_file is not None else (),
        format=format_,
        preset=preset,
        sampler={k: v for k, v in sampler.items() if v is not None},
    )
    run = RunOptions(
        backend=backend,
        workers=workers,
        ray_address=ray_address,
        threads=threads,
        device=device,
        batch_size=batch_size,
        overwrite=overwrite,
    )
    with ConsoleProgress(Console(stderr=True, markup=False, highlight=False)) as progress:
        summary = write_dataset(out, settings, run, progress)
    Console(soft_wrap=True, markup=False, highlight=False).print(
        f"dataset {summary.out}{os.sep}: {summary.images} images in {summary.shards} shard(s) ({summary.kept} kept, "
        f"{summary.made} made) in {summary.seconds:.1f} s"
    )


from .serve.schema import Limits as _ServeLimits  # noqa: E402 (no FastAPI here: serve.app imports it, in `serve`)


@cli.command()
@click.option(
    "--bundle",
    "bundles",
    multiple=True,
    metavar="PATH|NAME",
    help="A bundle to serve (repeat for more; the first is the default). Requests name bundles by their name.",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback unless --allow-remote)."
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8189, show_default=True, help="Port (0: a free one, printed)."
)
@click.option("--allow-remote", is_flag=True, help="Allow a --host that other machines can reach (prints a warning).")
@click.option(
    "--token",
    envvar="LATENT_ONNX_TOKEN",
    default=None,
    help="Require the header Authorization: Bearer TOKEN on the API (default: $LATENT_ONNX_TOKEN).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Let web pages from this origin call the API, e.g. http://localhost:3000 (repeatable; default: none).",
)
@click.option(
    "--worker-threads",
    type=click.IntRange(1, 256),
    default=None,
    help="Requests generating at once (default: the cores).",
)
@click.option(
    "--max-jobs",
    type=click.IntRange(1, 100_000),
    default=32,
    show_default=True,
    help="Requests generating or waiting; more are answered 429.",
)
@click.option(
    "--max-n",
    type=click.IntRange(1, MAX_SAMPLES),
    default=_ServeLimits.n,
    show_default=True,
    help="Most images per request.",
)
@click.option(
    "--max-steps", type=click.IntRange(0), default=_ServeLimits.steps, show_default=True, help="Most steps per request."
)
@click.option(
    "--max-batch",
    type=click.IntRange(1),
    default=_ServeLimits.batch_size,
    show_default=True,
    help="Largest batch_size.",
)
@click.option(
    "--max-body",
    type=click.IntRange(64),
    default=_ServeLimits.body_bytes,
    show_default=True,
    help="Largest request body, bytes (413 above).",
)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=1,
    show_default=True,
    help="ONNX Runtime intra-op threads per graph (requests run in parallel on the worker threads).",
)
def serve(
    bundles,
    host,
    port,
    allow_remote,
    token,
    cors_origins,
    worker_threads,
    max_jobs,
    max_n,
    max_steps,
    max_batch,
    max_body,
    device,
    threads,
):
    """Serve a local HTTP API (/v1) and a page (/) for generating images (needs the serve extra)."""
    import importlib.util

    if any(importlib.util.find_spec(module) is None for module in ("fastapi", "uvicorn")):
        raise InputError("latent-onnx serve needs the serve extra: pip install 'latent-onnx[serve]'")
    from .serve.app import listening_socket, run

    sock = listening_socket(host, port, allow_remote)
    pipes = {}
    for ref in bundles or (None,):
        pipe = Pipeline.from_bundle(ref, device=device, threads=threads)
        if pipe.bundle.name in pipes:
            raise InputError(f"two bundles are named '{pipe.bundle.name}'; serve bundles with different names")
        pipe.open_all()
        pipes[pipe.bundle.name] = pipe
    limits = _ServeLimits(n=max_n, steps=max_steps, batch_size=max_batch, body_bytes=max_body)
    run(
        pipes,
        sock,
        lambda line: click.echo(f"latent-onnx: {line}", err=True),
        limits=limits,
        workers=worker_threads or os.cpu_count() or 1,
        capacity=max_jobs,
        token=token,
        cors_origins=cors_origins,
    )


def main(argv: list[str] | None = None):
    """Entry point of the `latent-onnx` command."""
    cli.main(args=argv, prog_name="latent-onnx")
