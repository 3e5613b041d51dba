"""The SGLD update and the priors, in NumPy."""

import math

import numpy as np
import pytest

from latent_onnx import InputError, SamplerConfig, SGLDSampler
from latent_onnx.priors import GaussianMixturePrior, GaussianPrior


def test_langevin_chains_reach_the_known_gaussian_posterior():
    # target N(mu, s2 I) as the "condition", prior N(0, I): the posterior is Gaussian with
    # precision 1/s2 + 1 and mean (mu/s2) / (1/s2 + 1). True Langevin: eps2 = 2 * eps1.
    mu, s2, eps1 = np.array([2.0, -1.0, 0.5], dtype=np.float32), 0.5, 0.005
    precision = 1 / s2 + 1
    post_mean, post_var = (mu / s2) / precision, 1 / precision
    prior = GaussianPrior(dim=3, mean=0.0, std=1.0)
    sampler = SGLDSampler(SamplerConfig(steps=3000, eps1=eps1, eps2=2 * eps1, prior_weight=1.0))
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4000, 3)).astype(np.float32)
    for t in range(1500):
        cond_grad = (mu - z) / s2
        z = sampler.step(z, cond_grad, prior.grad_log_prob(z), rng.standard_normal(z.shape, dtype=np.float32), t)
    np.testing.assert_allclose(z.mean(axis=0), post_mean, atol=0.03)
    # the Euler discretisation inflates the variance by 1 / (1 - eps1 * precision / 2) (about 1%)
    np.testing.assert_allclose(z.var(axis=0), post_var / (1 - eps1 * precision / 2), rtol=0.06)


def test_step_applies_scales_noise_and_clip():
    config = SamplerConfig(steps=1, eps1=0.5, eps2=0.04, prior_weight=2.0, condition_scale=3.0, clip=(-1.0, 1.0))
    z = np.zeros((1, 3), dtype=np.float32)
    cond, prior, noise = np.array([[0.1, 0.0, 5.0]], np.float32), np.array([[0.0, 0.1, 0.0]], np.float32), np.ones((1, 3), np.float32)
    out = SGLDSampler(config).step(z, cond, prior, noise, 0)
    expected = np.clip(0.5 * (3.0 * cond + 2.0 * prior) + 0.2 * noise, -1.0, 1.0)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32


def test_normalize_grad_divides_each_sample_by_its_mean_absolute_gradient():
    sampler = SGLDSampler(SamplerConfig(steps=1, eps1=1.0, eps2=0.0, prior_weight=0.0, normalize_grad=True))
    cond = np.array([[2.0, -2.0], [0.1, 0.3]], dtype=np.float32)
    out = sampler.step(np.zeros_like(cond), cond, None, np.zeros_like(cond), 0)
    np.testing.assert_allclose(out, [[1.0, -1.0], [0.5, 1.5]], rtol=1e-6)


def test_step_size_decays_linearly_to_eps1_final():
    sampler = SGLDSampler(SamplerConfig(steps=5, eps1=1.0, eps1_final=0.2))
    assert [round(sampler.step_size(t), 6) for t in range(5)] == [1.0, 0.8, 0.6, 0.4, 0.2]
    assert SGLDSampler(SamplerConfig(steps=5, eps1=1.0)).step_size(4) == 1.0


@pytest.mark.parametrize(
    "field, value",
    [("steps", 0), ("steps", 2.5), ("eps1", 0.0), ("eps1", math.nan), ("eps2", -1e-3), ("eps2", math.inf),
     ("prior_weight", -1.0), ("condition_scale", 0.0), ("eps1_final", 0.0), ("normalize_grad", "yes"), ("clip", (1.0, 0.0))],
)
def test_config_rejects_out_of_range_values(field, value):
    with pytest.raises(InputError, match=field):
        SamplerConfig(**{field: value})


def test_config_updated_ignores_none_and_rejects_unknown_fields():
    config = SamplerConfig().updated(steps=7, eps1=None)
    assert config.steps == 7 and config.eps1 == SamplerConfig().eps1
    with pytest.raises(InputError, match="unknown sampler setting 'temperature'"):
        config.updated(temperature=1.0)


def test_mixture_prior_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    dim, components = 3, 2
    tril = np.tril(rng.normal(0, 0.3, (components, dim, dim))) + np.eye(dim)[None] * 0.8
    prior = GaussianMixturePrior(weights=np.array([0.3, 0.7]), means=rng.normal(0, 1, (components, dim)), scale_tril=tril)

    def log_density(z):
        total = 0.0
        for w, m, L in zip(prior.weights, prior.means, prior.scale_tril):
            cov = L @ L.T
            d = z - m
            total += w * math.exp(-0.5 * d @ np.linalg.solve(cov, d)) / math.sqrt(np.linalg.det(2 * math.pi * cov))
        return math.log(total)

    z = rng.normal(0, 1, (4, dim)).astype(np.float32)
    grad = prior.grad_log_prob(z)
    for b in range(4):
        for i in range(dim):
            step = np.zeros(dim)
            step[i] = 1e-5
            numeric = (log_density(z[b] + step) - log_density(z[b] - step)) / 2e-5
            assert grad[b, i] == pytest.approx(numeric, abs=1e-3)


def test_mixture_prior_samples_follow_the_mixture():
    prior = GaussianMixturePrior(
        weights=np.array([0.25, 0.75]), means=np.array([[-5.0, 0.0], [5.0, 0.0]]),
        scale_tril=np.stack([np.eye(2) * 0.5, np.eye(2) * 0.5]),
    )
    rng = np.random.default_rng(0)
    draws = np.stack([prior.sample(rng) for _ in range(4000)])
    assert draws.dtype == np.float32
    assert np.mean(draws[:, 0] > 0) == pytest.approx(0.75, abs=0.03)
    assert np.std(draws[draws[:, 0] > 0, 1]) == pytest.approx(0.5, rel=0.1)
