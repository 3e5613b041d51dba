"""The fashion-colors bundle: trained networks + mixture prior + tuned sampler defaults -> bundle directory."""

from __future__ import annotations

from pathlib import Path

from export_tools.bundle_writer import BundleReport, BundleSpec, write_bundle
from export_tools.conventions import PixelConvention
from export_tools.nets.fashion import ImageClassifier
from export_tools.recipes.fashion_data import MAX_TOKENS, class_file_lines
from export_tools.recipes.fashion_train import load_checkpoint, trained_networks

# Sampler defaults chosen with `evaluate` (see docs/fashion-bundle.md for the measurements):
# true Langevin (eps2 = 2 eps1) on the mixture prior, with the class / caption term sharpened 3x,
# chains started in the prior components the condition favours (a chain started in a component of
# another class rarely crosses to the requested one within a few hundred steps).
SAMPLER_DEFAULTS = {
    "steps": 200, "eps1": 0.003, "eps2": 0.006, "prior_weight": 1.0,
    "condition_scale": 3.0, "eps1_final": None, "normalize_grad": False, "start": "conditioned",
}
PRESETS = {
    # the paper's CaffeNet settings: tiny steps, almost no noise, no prior term, start from the prior
    "paper": {"eps1": 0.001, "eps2": 1e-8, "prior_weight": 0.0, "start": "init"},
}


def write_fashion_bundle(run_dir: Path, out_dir: Path, *, overwrite: bool = False, log=print) -> BundleReport:
    """Export the finished run in run_dir as the bundle out_dir (every graph validated against PyTorch)."""
    config, nets, prior, vocab = trained_networks(run_dir)
    progress = load_checkpoint(Path(run_dir) / "checkpoint.pt")["progress"]
    spec = BundleSpec(
        name=Path(out_dir).name,
        description="Coloured Fashion-MNIST items (10 classes x 8 colours), class- and caption-conditional, 32x32",
        license="MIT (networks trained by latent-onnx on Fashion-MNIST, MIT, Zalando SE)",
        latent_dim=config.latent_dim,
        image_hw=(32, 32),
        generator=nets.generator,
        generator_convention=PixelConvention(scale=255.0),
        prior=prior,
        init=None,  # chains start from the mixture prior itself, on the data's codes
        classes=class_file_lines(),
        vocabulary=vocab,
        max_tokens=MAX_TOKENS,
        head=nets.head,
        captioner=nets.captioner,
        encoder=nets.encoder,
        image_classifier=ImageClassifier(nets.encoder, nets.head),
        sampler=SAMPLER_DEFAULTS,
        presets=PRESETS,
        provenance={
            "recipe": "python -m export_tools.recipes.fashion train && python -m export_tools.recipes.fashion export",
            "data": "Fashion-MNIST (Debian dataset-fashion-mnist), tinted with 8 palette colours, padded to 32x32",
            "config_digest": config.digest(),
            "train_seconds": {stage: round(seconds) for stage, seconds in progress["seconds"].items()},
        },
    )
    return write_bundle(out_dir, spec, overwrite=overwrite, progress=log)
