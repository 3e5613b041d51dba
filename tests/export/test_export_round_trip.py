"""Export from PyTorch, sample with the runtime, and compare with the same SGLD written in PyTorch.

Both runs start from the same injected codes and use the same injected noise; the runtime's z after
every step must match PyTorch's, and so must the decoded images.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_networks import CLASSES, CONVENTION, IMAGE_HW, VOCABULARY, D, T
from torch import distributions as dist

from export_tools.export import ClassifierOnGenerator, ClassLogp
from latent_onnx import Pipeline

STEPS = 12
SETTINGS = dict(steps=STEPS, eps1=0.02, eps1_final=0.005, eps2=1e-3, prior_weight=0.2, condition_scale=8.0)


def torch_prior(spec) -> dist.Distribution:
    prior = spec.prior
    components = dist.MultivariateNormal(torch.from_numpy(prior.means), scale_tril=torch.from_numpy(prior.scale_tril))
    return dist.MixtureSameFamily(dist.Categorical(torch.from_numpy(prior.weights)), components)


def torch_sgld(spec, logp, init_z, noise, normalize_grad=False) -> list[np.ndarray]:
    """SGLD in PyTorch: z after each step, float32 [n, D], with the bundle's prior and clip."""
    prior = torch_prior(spec)
    z = torch.from_numpy(init_z)
    trajectory = []
    for step in range(STEPS):
        z_cond = z.clone().requires_grad_(True)
        (cond_grad,) = torch.autograd.grad(logp(z_cond).sum(), z_cond)
        if normalize_grad:
            cond_grad = cond_grad / cond_grad.abs().mean(dim=1, keepdim=True)
        z_prior = z.double().requires_grad_(True)
        (prior_grad,) = torch.autograd.grad(prior.log_prob(z_prior).sum(), z_prior)
        eps1 = SETTINGS["eps1"] + (SETTINGS["eps1_final"] - SETTINGS["eps1"]) * step / (STEPS - 1)
        drift = SETTINGS["condition_scale"] * cond_grad + SETTINGS["prior_weight"] * prior_grad.float()
        z = (z + eps1 * drift + math.sqrt(SETTINGS["eps2"]) * torch.from_numpy(noise[step])).clamp(*spec.clip)
        trajectory.append(z.detach().numpy().copy())
    return trajectory


def runtime_sgld(pipe, init_z, noise, **options) -> tuple[list[np.ndarray], object]:
    trajectory = []
    result = pipe.generate(
        n=len(init_z),
        seed=0,
        batch_size=2,
        init_z=init_z,
        noise=noise,
        callback=lambda step, total, z: trajectory.append(z.copy()),
        **SETTINGS,
        **options,
    )
    return trajectory, result


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.from_bundle(tiny_bundle[1].path, device="cpu", threads=1)


@pytest.fixture
def injected():
    rng = np.random.default_rng(7)
    return rng.standard_normal((3, D)).astype(np.float32), rng.standard_normal((STEPS, 3, D)).astype(np.float32)


def assert_same_trajectory(runtime: list[np.ndarray], reference: list[np.ndarray]) -> None:
    assert len(runtime) == 2 * STEPS  # 3 samples in batches of 2: the callback sees rows 0-1, then row 2
    merged = [np.concatenate([runtime[step], runtime[STEPS + step]]) for step in range(STEPS)]
    for step, (got, want) in enumerate(zip(merged, reference)):
        assert np.abs(got - want).max() < 1e-4, f"step {step}: {np.abs(got - want).max()}"
    assert np.abs(reference[-1]).max() < 3.0  # the clip range (-3, 3) was not reached: the trajectory is informative


def decoded(spec, z: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return CONVENTION.to_pixels(spec.generator(torch.from_numpy(z)), IMAGE_HW).numpy()


def test_class_conditioned_sampling_matches_pytorch(tiny_bundle, pipe, injected):
    spec, _ = tiny_bundle
    init_z, noise = injected
    weights = torch.tensor([[0.0, 0.7, 0.3]])  # "sneaker:0.7,ankle boot:0.3"
    reference = torch_sgld(spec, lambda z: ClassLogp(spec.head.eval())(z, weights.expand(len(z), -1)), init_z, noise)
    runtime, result = runtime_sgld(pipe, init_z, noise, classes="sneaker:0.7,ankle boot:0.3")
    assert_same_trajectory(runtime, reference)
    assert np.abs(result.pixels.astype(int) - decoded(spec, reference[-1]).astype(int)).max() <= 1
    assert result.pixels.shape == (3, *IMAGE_HW, 3)


def test_caption_conditioned_sampling_matches_pytorch(tiny_bundle, pipe, injected):
    spec, _ = tiny_bundle
    init_z, noise = injected
    tokens = torch.tensor([[VOCABULARY.index("a"), VOCABULARY.index("red"), VOCABULARY.index("bag"), 0]])
    mask = torch.ones(1, T)
    assert T == 4
    reference = torch_sgld(
        spec,
        lambda z: spec.captioner.eval()(z, tokens.expand(len(z), -1), mask.expand(len(z), -1)),
        init_z,
        noise,
        normalize_grad=True,
    )
    runtime, _ = runtime_sgld(pipe, init_z, noise, caption="A red bag.", normalize_grad=True)
    assert_same_trajectory(runtime, reference)


def test_composite_path_matches_pytorch(tiny_bundle, pipe, injected):
    spec, _ = tiny_bundle
    init_z, noise = injected
    composite = ClassLogp(ClassifierOnGenerator(spec.generator, spec.image_classifier)).eval()
    weights = torch.tensor([[1.0, 0.0, 0.0]])
    reference = torch_sgld(spec, lambda z: composite(z, weights.expand(len(z), -1)), init_z, noise)
    runtime, _ = runtime_sgld(pipe, init_z, noise, classes=CLASSES[0], path="composite")
    assert_same_trajectory(runtime, reference)


def test_runtime_encoder_and_decoder_match_pytorch(tiny_bundle, pipe):
    spec, _ = tiny_bundle
    z = np.random.default_rng(8).standard_normal((2, D)).astype(np.float32)
    pixels = pipe.decode(z)
    assert np.abs(pixels.astype(int) - decoded(spec, z).astype(int)).max() <= 1
    with torch.no_grad():
        expected = spec.encoder(CONVENTION.from_pixels(torch.from_numpy(pixels))).numpy()
    np.testing.assert_allclose(pipe.encode(pixels), expected, atol=1e-5)
