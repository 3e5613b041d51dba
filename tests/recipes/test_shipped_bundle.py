"""The committed default bundle, through the runtime exactly as users get it."""

import numpy as np
import pytest

from export_tools.recipes.evaluator import mean_pairwise_distance
from export_tools.recipes.fashion_bundle import PRESETS, SAMPLER_BY_CONDITION, SAMPLER_DEFAULTS
from export_tools.recipes.fashion_data import CLASS_NAMES, COLOUR_NAMES, PALETTE
from latent_onnx import Pipeline


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_bundle(None, device="cpu", threads=1)


def test_default_bundle_is_fashion_colors_with_tuned_defaults(pipe):
    assert pipe.bundle.name == "fashion-colors"
    assert {key: pipe.bundle.sampler[key] for key in SAMPLER_DEFAULTS} == SAMPLER_DEFAULTS
    assert pipe.bundle.sampler_by_condition == SAMPLER_BY_CONDITION
    assert pipe.bundle.presets == PRESETS
    assert pipe.bundle.prior.describe() == "gaussian N(0, 1^2 I)"  # the flow's space: exactly N(0, I)
    assert pipe.sampler_config().start == "init" and pipe.sampler_config("paper").prior_weight == 0.0
    assert set(pipe.bundle.graphs) == {
        "generator",
        "classifier",
        "class_grad",
        "caption_grad",
        "encoder",
        "composite_class_grad",
    }


def test_class_names_and_simple_captions_are_understood(pipe):
    for index, name in enumerate(CLASS_NAMES):
        assert pipe.class_weights(name).argmax() == index
    for colour in COLOUR_NAMES:
        for name in CLASS_NAMES:
            tokens, mask = pipe.caption_tokens(f"a {colour} {name}")
            assert mask.sum() == len(name.split()) + 3


def test_default_generate_runs_on_the_shipped_bundle(pipe):
    result = pipe.generate(classes="ankle boot", n=2, seed=1, steps=5)
    assert result.pixels.shape == (2, 32, 32, 3) and result.z.shape == (2, pipe.bundle.latent_dim)


def test_class_samples_are_that_class_for_the_bundle_classifier(pipe):
    result = pipe.generate(classes="ankle boot", n=8, seed=1, batch_size=8)
    logits = pipe.runner("classifier").run(z=result.z)["logits"]
    assert (logits.argmax(1) == CLASS_NAMES.index("ankle boot")).mean() >= 0.75


def _pixel_spread(pixels: np.ndarray) -> float:
    """Mean pairwise distance of images uint8 [N, H, W, 3] as vectors in [0, 1]."""
    return mean_pairwise_distance(pixels.reshape(len(pixels), -1).astype(np.float64) / 255)


def test_the_diverse_preset_spreads_class_samples_wider_and_keeps_their_class(pipe):
    defaults = diverse = 0.0
    for name in ("shirt", "sneaker", "dress"):
        runs = [pipe.generate(classes=name, n=32, seed=5, batch_size=32, preset=p) for p in (None, "diverse")]
        defaults, diverse = defaults + _pixel_spread(runs[0].pixels), diverse + _pixel_spread(runs[1].pixels)
        judged = pipe.runner("classifier").run(z=runs[1].z)["logits"].argmax(1)
        assert (judged == CLASS_NAMES.index(name)).mean() >= 0.75
    assert diverse > 1.03 * defaults  # measured 1.05 on three classes (seed 5)


def test_the_steps_do_the_work_start_is_chance_and_chains_cross_between_classes(pipe):
    start = pipe.generate(classes="trouser", n=40, seed=3, batch_size=40, steps=0)
    trousers = pipe.runner("classifier").run(z=start.z)["logits"].argmax(1) == CLASS_NAMES.index("trouser")
    assert trousers.mean() < 0.4  # the start is a draw from N(0, I), not a trouser
    bags = pipe.generate(classes="bag", n=16, seed=3, batch_size=16)
    crossed = pipe.generate(classes="trouser", n=16, seed=4, batch_size=16, init_z=bags.z)
    assert (
        pipe.runner("classifier").run(z=crossed.z)["logits"].argmax(1) == CLASS_NAMES.index("trouser")
    ).mean() >= 0.75


@pytest.mark.parametrize("colour", ["red", "blue", "green"])
def test_caption_colour_shows_in_the_pixels(pipe, colour):
    pixels = pipe.generate(caption=f"a {colour} sneaker", n=4, seed=2, batch_size=4).pixels.astype(float)
    bright = pixels.sum(-1) > 120  # the item, not the black background
    mean_rgb = pixels[bright].mean(0)
    target = np.array(PALETTE[colour], dtype=float)
    cosine = mean_rgb @ target / np.linalg.norm(mean_rgb) / np.linalg.norm(target)
    assert cosine > 0.95
