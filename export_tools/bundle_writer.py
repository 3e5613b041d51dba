"""Write a bundle directory (docs/bundle-format.md): export and validate every graph, then the manifest.

Everything is written into a temporary sibling directory that is renamed into place at the end,
so a failed export never leaves a half-written bundle behind.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export_tools import EXPORTER, ExportError
from export_tools.conventions import PixelConvention
from export_tools.export import (
    GraphReport,
    export_caption_grad,
    export_class_grad,
    export_classifier,
    export_composite_class_grad,
    export_encoder,
    export_generator,
)
from export_tools.priors import GaussianMixturePrior, GaussianPrior, Prior
from export_tools.quantize import quantize_int8
from export_tools.specs import GraphDims
from latent_onnx.bundle import SAMPLER_KEYS, load_bundle, sampler_settings_problem
from latent_onnx.contracts import CONDITIONS, FORMAT, FORMAT_VERSION, NAME_PATTERN, NAME_RULE, ROLES
from latent_onnx.errors import LatentOnnxError
from latent_onnx.sampler import SamplerConfig
from latent_onnx.sessions import probe_bundle

PRECISIONS = ("float32", "int8", "auto")  # BundleSpec.class_grad_precision

# Sampler defaults written when a BundleSpec leaves a key out: the runtime's own (latent_onnx.SamplerConfig).
DEFAULT_SAMPLER = {key: value for key, value in SamplerConfig().to_dict().items() if key in SAMPLER_KEYS}


@dataclass
class BundleSpec:
    """Everything a bundle is made of; networks are PyTorch modules (switched to eval mode on export)."""

    name: str  # bundle name, [a-z0-9][a-z0-9._-]*
    latent_dim: int  # D
    image_hw: tuple[int, int]  # (H, W) of the bundle's images
    generator: nn.Module  # z [B, D] -> x [B, 3, h, w] in generator_convention
    generator_convention: PixelConvention = field(
        default_factory=PixelConvention
    )  # also the encoder's input convention
    description: str = ""  # one line
    license: str = ""  # SPDX id or free text
    prior: Prior = field(default_factory=GaussianPrior)  # p(z) whose log-density gradient the sampler adds
    init: Prior | None = None  # distribution of z_0; None = the prior
    clip: tuple[float, float] | None = None  # z clipped to [lo, hi] after every step; None = no clipping
    classes: list[str] | None = None  # class k's name (synonyms separated by ", "); needed with head / image_classifier
    vocabulary: list[str] | None = None  # token i's word, "<eos>" at 0; needed with captioner
    max_tokens: int | None = None  # T, words + final <eos>; needed with captioner
    head: nn.Module | None = None  # z [B, D] -> logits [B, K]: classifier and class_grad graphs
    captioner: nn.Module | None = None  # (z, tokens [B, T] int64, mask [B, T]) -> logp [B]: caption_grad graph
    encoder: nn.Module | None = None  # x [B, 3, H, W] in generator_convention -> z [B, D]: encoder graph
    image_classifier: nn.Module | None = None  # x [B, 3, h, w] generator output -> logits [B, K]: composite_class_grad
    sampler: dict = field(default_factory=dict)  # overrides of DEFAULT_SAMPLER
    # "class" / "caption" -> partial sampler overrides for requests of that kind of condition
    sampler_by_condition: dict[str, dict] = field(default_factory=dict)
    presets: dict[str, dict] = field(default_factory=dict)  # preset name -> partial sampler overrides, may set "clip"
    provenance: dict = field(
        default_factory=dict
    )  # free-form; "created", "exporter", "torch", "validation" (and "precision") are added
    class_grad_precision: str = (
        "float32"  # "int8": class_grad weights quantised (export_tools.quantize), same contract;
    )
    # "auto": int8 when the quantised graph passes its check against float32, else float32 (said, and recorded)


@dataclass(frozen=True)
class BundleReport:
    """What write_bundle wrote and what validation measured."""

    path: Path  # the bundle directory
    manifest: dict  # the manifest as written
    graphs: dict[str, GraphReport]  # role -> export report (max |ONNX Runtime - PyTorch| per output, float32 graph)
    precision: dict[str, dict] = field(
        default_factory=dict
    )  # quantised role -> {"weights": "int8", figures vs float32}

    def max_diff(self) -> dict[str, dict[str, float]]:
        """role -> output name -> largest absolute difference measured by validation."""
        return {role: dict(report.max_diff) for role, report in self.graphs.items()}


def write_bundle(
    out_dir: str | Path, spec: BundleSpec, *, overwrite: bool = False, progress: Callable[[str], None] | None = None
) -> BundleReport:
    """Export every graph whose network `spec` gives, validate each against PyTorch, write the bundle.

    `progress` receives one line per step. Raises ExportError on a bad spec, a failed export or
    validation, or an existing `out_dir` without `overwrite`.
    """
    say = progress or (lambda line: None)
    out_dir = Path(out_dir)
    _check_spec(spec)
    if out_dir.exists() and not (overwrite and out_dir.is_dir()):
        raise ExportError(f"{out_dir} already exists: pass overwrite=True (--overwrite) or choose another directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        reports = _export_graphs(spec, staging, say)
        precision = _quantize_graphs(spec, staging, say)
        manifest = _write_files_and_manifest(spec, staging, reports, precision)
        os.chmod(staging, 0o755)
        _check_with_runtime(staging)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"wrote {out_dir}")
    graphs = {role: dataclasses.replace(r, path=out_dir / r.path.name) for role, r in reports.items()}
    return BundleReport(out_dir, manifest, graphs, precision)


def _dims(spec: BundleSpec) -> GraphDims:
    return GraphDims(
        latent_dim=spec.latent_dim,
        num_classes=len(spec.classes) if spec.classes else None,
        max_tokens=spec.max_tokens,
        vocab_size=len(spec.vocabulary) if spec.vocabulary else None,
        image_hw=tuple(spec.image_hw),
    )


def _latent_sampler(spec: BundleSpec):
    """Validation draws z like the sampler starts: from init (or the prior), clipped."""
    start = spec.init or spec.prior

    def sample(n: int, rng: np.random.Generator) -> np.ndarray:
        z = start.sample(n, spec.latent_dim, rng)
        return np.clip(z, *spec.clip) if spec.clip else z

    return sample


def _export_graphs(spec: BundleSpec, staging: Path, say: Callable[[str], None]) -> dict[str, GraphReport]:
    dims, sample, convention = _dims(spec), _latent_sampler(spec), spec.generator_convention
    # role -> the network it needs (None: not in this bundle), and how to export it to a path
    jobs = {
        "generator": (spec.generator, lambda p: export_generator(spec.generator, convention, dims, p, sample)),
        "classifier": (spec.head, lambda p: export_classifier(spec.head, dims, p, sample)),
        "class_grad": (spec.head, lambda p: export_class_grad(spec.head, dims, p, sample)),
        "caption_grad": (spec.captioner, lambda p: export_caption_grad(spec.captioner, dims, p, sample)),
        "encoder": (spec.encoder, lambda p: export_encoder(spec.encoder, convention, dims, p, sample)),
        "composite_class_grad": (
            spec.image_classifier,
            lambda p: export_composite_class_grad(spec.generator, spec.image_classifier, dims, p, sample),
        ),
    }
    reports = {}
    for role in ROLES:
        network, export = jobs[role]
        if network is None:
            continue
        say(f"exporting {role} ...")
        report = export(staging / f"{role}.onnx")
        diffs = ", ".join(f"{name} {diff:.2g}" for name, diff in report.max_diff.items())
        say(f"{role}: validated against PyTorch, max |diff| {diffs} ({report.seconds:.1f} s)")
        reports[role] = report
    return reports


def _quantize_graphs(spec: BundleSpec, staging: Path, say: Callable[[str], None]) -> dict[str, dict]:
    """Quantise class_grad in place when spec.class_grad_precision asks; role -> {"weights", figures}."""
    if spec.class_grad_precision == "float32":
        return {}
    say("quantising class_grad to int8 weights ...")
    try:
        figures = quantize_int8(
            staging / "class_grad.onnx",
            staging / "class_grad.onnx",
            "class_grad",
            _dims(spec),
            latent_sampler=_latent_sampler(spec),
        )
    except ExportError as exc:
        if spec.class_grad_precision == "int8":
            raise
        say(f"class_grad: kept float32 weights, int8 did not pass its check: {exc}")
        return {"class_grad": {"weights": "float32", "int8_refused": str(exc)}}
    say(
        f"class_grad: int8 against float32, gradient cosine median {figures['grad_cosine_median']:.4f} "
        f"min {figures['grad_cosine_min']:.4f}, logp relative error {figures['logp_relative_error']:.2g}"
    )
    return {
        "class_grad": {
            "weights": "int8",
            "method": "onnxruntime dynamic quantisation of row-normalised products, per-channel weights",
            **figures,
        }
    }


def _file_entry(directory: Path, name: str, data: bytes) -> dict:
    (directory / name).write_bytes(data)
    return {"file": name, "sha256": hashlib.sha256(data).hexdigest()}


def _prior_entry(prior: Prior, directory: Path, stem: str) -> dict:
    if isinstance(prior, GaussianMixturePrior):
        entry = _file_entry(directory, f"{stem}.npz", prior.npz_bytes())
        return prior.manifest_entry(entry["file"], entry["sha256"])
    return prior.manifest_entry()


def _write_files_and_manifest(
    spec: BundleSpec, staging: Path, reports: dict[str, GraphReport], precision: dict[str, dict]
) -> dict:
    latent = {"dim": spec.latent_dim, "prior": _prior_entry(spec.prior, staging, "prior")}
    if spec.init is not None:
        latent["init"] = _prior_entry(spec.init, staging, "init")
    latent["clip"] = _clip_entry(spec.clip)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": spec.name,
        "description": spec.description,
        "license": spec.license,
        "latent": latent,
        "image": {"height": int(spec.image_hw[0]), "width": int(spec.image_hw[1]), "channels": 3},
    }
    if spec.classes:
        manifest["classes"] = _file_entry(staging, "classes.txt", ("\n".join(spec.classes) + "\n").encode())
    if spec.vocabulary:
        vocabulary = _file_entry(staging, "vocab.txt", ("\n".join(spec.vocabulary) + "\n").encode())
        manifest["caption"] = {"vocabulary": vocabulary, "max_tokens": spec.max_tokens}
    manifest["graphs"] = {
        role: {"file": report.path.name, "sha256": hashlib.sha256(report.path.read_bytes()).hexdigest()}
        for role, report in reports.items()
    }
    manifest["sampler"] = {**DEFAULT_SAMPLER, **spec.sampler}
    if spec.sampler_by_condition:
        manifest["sampler_by_condition"] = {kind: dict(values) for kind, values in spec.sampler_by_condition.items()}
    manifest["presets"] = {
        name: {**values, "clip": _clip_entry(values["clip"])} if "clip" in values else dict(values)
        for name, values in spec.presets.items()
    }
    manifest["provenance"] = {
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **spec.provenance,
        "exporter": EXPORTER,
        "torch": torch.__version__,
        "validation": {role: report.max_diff for role, report in reports.items()},
    }
    if precision:
        manifest["provenance"]["precision"] = precision
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    return manifest


def _clip_entry(clip: tuple[float, float] | None) -> list[float] | None:
    return [float(v) for v in clip] if clip is not None else None


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename `staging` to `out_dir`, replacing an existing directory only once the new one is complete."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    os.replace(out_dir, retired / out_dir.name)
    os.replace(staging, out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _check_with_runtime(directory: Path) -> None:
    """The runtime decides what a valid bundle is: ExportError unless its reader loads what was written and every
    graph opens against its contract and runs its probe."""
    try:
        probe_bundle(load_bundle(directory))
    except LatentOnnxError as error:
        raise ExportError(f"the runtime refuses the bundle just written: {error}") from None


def _check_sampler_values(values: dict, where: str) -> None:
    """The manifest reader's rule for sampler settings (numpy scalars pass here, then fail the JSON check)."""
    problem = sampler_settings_problem(values)
    if problem is not None:
        key, what = problem
        raise ExportError(f"{where}: {key}={values[key]!r} {what}")


def _check_clip(clip, where: str) -> None:
    if clip is not None and not (
        isinstance(clip, (tuple, list))
        and len(clip) == 2
        and _is_number(clip[0])
        and _is_number(clip[1])
        and clip[0] < clip[1]
    ):
        raise ExportError(f"{where} must be None or (lo, hi) with lo < hi, got {clip!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_lines(lines: list[str], what: str) -> None:
    """Each entry becomes one line of a text file, so it must be one non-blank line (duplicates are allowed:
    ImageNet names "crane" twice)."""
    if not lines or any(not isinstance(w, str) or not w.strip() or "\n" in w or w != w.strip() for w in lines):
        raise ExportError(f"{what} must be a non-empty list of non-blank one-line strings without surrounding spaces")


def _check_spec(spec: BundleSpec) -> None:
    """Raise ExportError for anything the manifest rules (docs/bundle-format.md) would reject."""
    if not isinstance(spec.name, str) or not NAME_PATTERN.match(spec.name):
        raise ExportError(f"bundle name {spec.name!r} must match {NAME_RULE}")
    if not isinstance(spec.latent_dim, int) or spec.latent_dim < 1:
        raise ExportError(f"latent_dim must be an int >= 1, got {spec.latent_dim!r}")
    if len(spec.image_hw) != 2 or min(spec.image_hw) < 1:
        raise ExportError(f"image_hw must be (height, width) >= 1, got {spec.image_hw!r}")
    if spec.generator is None:
        raise ExportError("a bundle needs a generator")
    for label, prior in (("prior", spec.prior), ("init", spec.init)):
        if prior is not None and not isinstance(prior, (GaussianPrior, GaussianMixturePrior)):
            raise ExportError(f"{label} must be a GaussianPrior or GaussianMixturePrior")
        if isinstance(prior, GaussianMixturePrior) and prior.dim != spec.latent_dim:
            raise ExportError(f"{label} has dimension {prior.dim}, latent_dim is {spec.latent_dim}")
    _check_clip(spec.clip, "clip")
    if spec.class_grad_precision not in PRECISIONS:
        raise ExportError(f"class_grad_precision must be one of {PRECISIONS}, got {spec.class_grad_precision!r}")
    if spec.class_grad_precision != "float32" and spec.head is None:
        raise ExportError(f"class_grad_precision={spec.class_grad_precision!r} needs a head (the class_grad graph)")
    if (spec.head is not None or spec.image_classifier is not None) and not spec.classes:
        raise ExportError("a head or image_classifier needs the class names (BundleSpec.classes)")
    if spec.classes:
        _check_lines(spec.classes, "classes")
    if spec.captioner is not None and (not spec.vocabulary or spec.max_tokens is None):
        raise ExportError("a captioner needs BundleSpec.vocabulary and BundleSpec.max_tokens")
    if spec.vocabulary:
        _check_lines(spec.vocabulary, "vocabulary")
        if spec.vocabulary[0] != "<eos>" or any(" " in w for w in spec.vocabulary):
            raise ExportError("vocabulary must start with '<eos>' (token 0) and hold single words")
        if not isinstance(spec.max_tokens, int) or spec.max_tokens < 2:
            raise ExportError(f"max_tokens must be an int >= 2 (words + final <eos>), got {spec.max_tokens!r}")
    _check_sampler_values(spec.sampler, "sampler")
    for kind, values in spec.sampler_by_condition.items():
        if kind not in CONDITIONS or not isinstance(values, dict):
            raise ExportError(
                f"sampler_by_condition must map a condition ({', '.join(CONDITIONS)}) to a dict of sampler"
                f" overrides, not {kind!r}: {values!r}"
            )
        _check_sampler_values(values, f"sampler_by_condition {kind!r}")
    for preset, values in spec.presets.items():
        if not isinstance(preset, str) or not preset or not isinstance(values, dict):
            raise ExportError(f"preset {preset!r} must map a name to a dict of sampler overrides")
        _check_sampler_values({k: v for k, v in values.items() if k != "clip"}, f"preset {preset!r}")
        _check_clip(values.get("clip"), f"preset {preset!r}: clip")
    try:
        json.dumps(
            [
                spec.name,
                spec.description,
                spec.license,
                spec.sampler,
                spec.sampler_by_condition,
                spec.presets,
                spec.provenance,
            ],
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise ExportError(
            f"the manifest cannot be written as JSON ({exc}): check provenance, sampler and presets"
        ) from exc
