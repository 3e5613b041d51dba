"""The fashion-colors bundle: trained networks in the flow's N(0, I) space + tuned sampler defaults -> bundle directory."""

from __future__ import annotations

import copy
from pathlib import Path

from export_tools.bundle_writer import BundleReport, BundleSpec, write_bundle
from export_tools.conventions import PixelConvention
from export_tools.nets.fashion import ImageClassifier
from export_tools.nets.flow import FlowEncoder, FlowGenerator
from export_tools.priors import GaussianPrior
from export_tools.recipes.fashion_data import MAX_TOKENS, class_file_lines
from export_tools.recipes.fashion_train import load_checkpoint, trained_networks

# Sampler defaults chosen with `evaluate` (see docs/fashion-bundle.md for the measurements): the paper's
# SGLD from z_0 ~ N(0, I) in the flow's space, true Langevin (eps2 = 2 eps1), the class / caption term
# sharpened by the condition scale. A class request needs fewer steps than a caption request: on the
# recipe-version-5 networks (100 per class, seeds 0 / 1 / 2), 100 steps at scale 17.5 give class 0.951 /
# 0.950 / 0.954, diversity 0.954 / 0.958 / 0.960 and Frechet 24.3 / 23.5 / 26.9 (200 steps at scale 20:
# 0.958 / 0.966 / -, 0.932 / 0.946 / -, 28.5 / 27.6 / -; 100 steps at 15 / 17 / 18 / 20, seed 0: class 0.951
# / 0.949 / 0.952 / 0.959, Frechet 22.9 / 23.8 / 24.8 / 26.2), while a caption chain needs 200 steps at
# scale 20 to reach its colour (caption class 0.935, colour 0.983; 0.901 / 0.978 in 100 steps).
SAMPLER_DEFAULTS = {
    "method": "sgld",
    "steps": 100,
    "eps1": 0.005,
    "eps2": 0.01,
    "prior_weight": 1.0,
    "condition_scale": 17.5,
    "anneal": 0.0,
    "eps1_final": None,
    "normalize_grad": False,
    "start": "init",
}
SAMPLER_BY_CONDITION = {"caption": {"steps": 200, "condition_scale": 20.0}}  # over SAMPLER_DEFAULTS for captions
PRESETS = {
    # the paper's CaffeNet settings: tiny steps, almost no noise, no prior term
    "paper": {"method": "sgld", "eps1": 0.001, "eps2": 1e-8, "prior_weight": 0.0, "condition_scale": 1.0},
    # class samples closer to real images' spread, for a little class agreement: a wider prior term and the
    # condition ramped up over the whole run (100 steps, 100 per class, seeds 0 / 1: class 0.951 / 0.943,
    # diversity 0.963 / 0.965, Frechet 23.2 / 21.9, crossing 0.935 / 0.935); captions (their 200 steps) lose
    # class with it (0.909 against 0.935), so it is not the default
    "diverse": {"prior_weight": 0.75, "anneal": 1.0, "condition_scale": 30.0},
}


def write_fashion_bundle(run_dir: Path, out_dir: Path, *, overwrite: bool = False, log=print) -> BundleReport:
    """Export the finished run in run_dir as the bundle out_dir (every graph validated against PyTorch)."""
    config, nets, vocab = trained_networks(run_dir)
    # the encoder side gets its own copy of the flow: the composite graph holds both sides, and weights tied
    # between them do not survive the gradient tracing (torch.func.functional_call)
    encoder = FlowEncoder(copy.deepcopy(nets.flow), nets.encoder)
    progress = load_checkpoint(Path(run_dir) / "checkpoint.pt")["progress"]
    spec = BundleSpec(
        name=Path(out_dir).name,
        description="Coloured Fashion-MNIST items (10 classes x 8 colours), class- and caption-conditional, 32x32",
        license="MIT (networks trained by latent-onnx on Fashion-MNIST, MIT, Zalando SE)",
        latent_dim=config.latent_dim,
        image_hw=(32, 32),
        generator=FlowGenerator(nets.flow, nets.generator),
        generator_convention=PixelConvention(scale=255.0),
        prior=GaussianPrior(0.0, 1.0),  # exact: the flow maps N(0, I) onto the encoder's codes
        init=None,  # chains start from the prior, as in the paper
        classes=class_file_lines(),
        vocabulary=vocab,
        max_tokens=MAX_TOKENS,
        head=nets.head,
        captioner=nets.captioner,
        encoder=encoder,
        image_classifier=ImageClassifier(encoder, nets.head),
        sampler=SAMPLER_DEFAULTS,
        sampler_by_condition=SAMPLER_BY_CONDITION,
        presets=PRESETS,
        provenance={
            "recipe": "python -m export_tools.recipes.fashion train && python -m export_tools.recipes.fashion export",
            "data": "Fashion-MNIST (Debian dataset-fashion-mnist), tinted with 8 palette colours, padded to 32x32",
            "config_digest": config.digest(),
            "train_seconds": {stage: round(seconds) for stage, seconds in progress["seconds"].items()},
        },
    )
    return write_bundle(out_dir, spec, overwrite=overwrite, progress=log)
