"""`latent-onnx-export imagenet ...`: download the published weights and convert them into a bundle."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from export_tools import ExportError
from export_tools.bundle_writer import PRECISIONS
from export_tools.convert.download import REGISTRY, download_published
from export_tools.convert.imagenet_bundle import ImageNetOptions, ImageNetSources, write_imagenet_bundle

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "latent-onnx" / "imagenet"
# Files looked for in the cache folder when an option is not given, first match wins.
CACHE_CANDIDATES = {
    "generator": (REGISTRY["deepsim-fc6"].name, "upconvGAN_fc6.pt"),
    "classifier": (REGISTRY["caffenet"].name, "caffenet.pt"),
    "captioner": (REGISTRY["lrcn"].name,),
    "vocabulary": (REGISTRY["lrcn-vocabulary"].name,),
}

_console = Console(stderr=True, highlight=False)


def _from_cache(given: Path | None, role: str, cache: Path) -> Path | None:
    if given is not None:
        return given
    return next((cache / name for name in CACHE_CANDIDATES[role] if (cache / name).is_file()), None)


@click.group()
def main() -> None:
    """Convert the published ImageNet networks (DeePSiM fc6 generator, CaffeNet, LRCN) into a bundle."""


@main.command()
@click.argument("files", nargs=-1)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_CACHE,
    show_default=True,
    help="folder the files are downloaded into",
)
@click.option(
    "--sha256",
    "pins",
    multiple=True,
    metavar="FILE=HEX",
    help="the sha256 you trust for FILE (needed where no digest is published); repeatable",
)
@click.option("--list", "list_only", is_flag=True, help="list the files that can be downloaded, with their licences")
def download(files: tuple[str, ...], cache: Path, pins: tuple[str, ...], list_only: bool) -> None:
    """Download published weights into the cache.

    FILES are names from --list: caffenet, deepsim-fc6, lrcn, lrcn-vocabulary.
    """
    if list_only or not files:
        table = Table("file", "what", "licence", "pinned digest", title=f"published files (cache: {cache})")
        for key, entry in REGISTRY.items():
            table.add_row(key, entry.role, entry.license, ", ".join(entry.digests) or "none: pass --sha256")
        Console().print(table)
        return
    trusted = {}
    for pin in pins:
        key, sep, digest = pin.partition("=")
        if not sep or key not in REGISTRY:
            raise ExportError(f"--sha256 {pin!r} must look like FILE=HEX with FILE one of {', '.join(REGISTRY)}")
        trusted[key] = digest
    for key in files:
        path = download_published(key, cache, trusted.get(key))
        _console.print(f"{key}: {path}")


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_CACHE,
    show_default=True,
    help="where files not given below are looked for (as `download` names them)",
)
@click.option(
    "--generator",
    type=click.Path(dir_okay=False, path_type=Path),
    help="DeePSiM fc6 weights: generator.caffemodel or upconvGAN_fc6.pt",
)
@click.option(
    "--classifier",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CaffeNet weights: bvlc_reference_caffenet.caffemodel or caffenet.pt",
)
@click.option(
    "--captioner",
    type=click.Path(dir_okay=False, path_type=Path),
    help="LRCN weights: lrcn_caffenet_iter_110000.caffemodel (captions; needs --vocabulary)",
)
@click.option("--vocabulary", type=click.Path(dir_okay=False, path_type=Path), help="LRCN's vocabulary.txt")
@click.option(
    "--labels",
    type=click.Path(dir_okay=False, path_type=Path),
    help="class names, one line per class [default: the shipped ILSVRC-2012 synset words]",
)
@click.option(
    "--crop/--no-crop", default=False, help="images centre-cropped to 227x227 as CaffeNet sees them [default: 256x256]"
)
@click.option("--clip/--no-clip", default=True, help="clip z to [0, 30] after every step, as PPGN does [default: clip]")
@click.option(
    "--composite", is_flag=True, help="also export the slow composite path (generator + CaffeNet) for comparison"
)
@click.option("--no-encoder", is_flag=True, help="leave out the encoder graph (no --init-image)")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=ImageNetOptions.class_grad_precision,
    show_default=True,
    help="class_grad weights: int8 (faster latent steps on CPUs, by how much depends on the CPU; checked against"
    " float32 on the way), float32, or auto (int8 when it passes that check, else float32)",
)
@click.option("--name", default=ImageNetOptions.name, show_default=True, help="bundle name")
@click.option(
    "--max-tokens",
    type=click.IntRange(2, 64),
    default=ImageNetOptions.max_tokens,
    show_default=True,
    help="longest caption, in words + <eos>",
)
@click.option("--overwrite", is_flag=True, help="replace an existing bundle (only once the new one is complete)")
@click.option("--width", type=int, default=1, hidden=True, help="network width divisor, for tests")
def convert(
    out: Path,
    cache: Path,
    generator: Path | None,
    classifier: Path | None,
    captioner: Path | None,
    vocabulary: Path | None,
    labels: Path | None,
    crop: bool,
    clip: bool,
    composite: bool,
    no_encoder: bool,
    precision: str,
    name: str,
    max_tokens: int,
    overwrite: bool,
    width: int,
) -> None:
    """Convert the weights into a bundle at OUT.

    Every graph is validated against PyTorch; nothing is left at OUT if anything fails.
    """
    generator = _from_cache(generator, "generator", cache)
    classifier = _from_cache(classifier, "classifier", cache)
    if generator is None or classifier is None:
        missing, key = ("generator", "deepsim-fc6") if generator is None else ("classifier", "caffenet")
        raise ExportError(f"no {missing} weights: pass --{missing} or run `latent-onnx-export imagenet download {key}`")
    if captioner is None and vocabulary is None:
        captioner, vocabulary = _from_cache(None, "captioner", cache), _from_cache(None, "vocabulary", cache)
        if captioner is None or vocabulary is None:
            captioner = vocabulary = None  # captions only when both are there
    sources = ImageNetSources(generator, classifier, captioner, vocabulary, labels)
    options = ImageNetOptions(
        name=name,
        crop=crop,
        clip=ImageNetOptions.clip if clip else None,
        encoder=not no_encoder,
        composite=composite,
        max_tokens=max_tokens,
        width=width,
        class_grad_precision=precision,
    )
    write_imagenet_bundle(out, sources, options, overwrite=overwrite, progress=lambda line: _console.print(line))
    _console.print(f"try: latent-onnx generate --bundle {out} --class goldfinch")
