"""The samplers (SGLD, MALA, annealing) on targets whose answer is known, and the priors, in NumPy."""

import math
from dataclasses import replace

import numpy as np
import pytest

from latent_onnx import InputError, SamplerConfig, SGLDSampler
from latent_onnx.priors import GaussianMixturePrior, GaussianPrior
from latent_onnx.sampler import ChainState


def _gaussian_target(mu: np.ndarray, s2: float):
    """log N(z; mu, s2 I) up to a constant and its gradient: a condition whose posterior is known."""

    def target(z):
        return (-0.5 * np.sum((z - mu) ** 2, axis=1) / s2).astype(np.float32), ((mu - z) / s2).astype(np.float32)

    return target


def _run_chains(config: SamplerConfig, target, z, steps: int, seed: int = 0, prior=None):
    prior = prior or GaussianPrior(dim=z.shape[1], mean=0.0, std=1.0)
    sampler = SGLDSampler(config, prior)
    rng = np.random.default_rng(seed)
    state = ChainState.at(z, target)
    for t in range(steps):
        state = sampler.step(state, target, rng.standard_normal(z.shape, dtype=np.float32), rng.random(len(z)), t)
    return state


@pytest.mark.parametrize("method", ["sgld", "mala"])
def test_chains_reach_the_known_gaussian_posterior(method):
    # condition N(mu, s2 I), prior N(0, I): the posterior is Gaussian with precision 1/s2 + 1 and
    # mean (mu/s2) / (1/s2 + 1). True Langevin: eps2 = 2 * eps1.
    mu, s2 = np.array([2.0, -1.0, 0.5], dtype=np.float32), 0.5
    precision = 1 / s2 + 1
    post_mean, post_var = (mu / s2) / precision, 1 / precision
    eps1 = 0.005 if method == "sgld" else 0.2  # mala corrects the discretisation, so it takes large steps
    config = SamplerConfig(method=method, steps=1500, eps1=eps1, eps2=2 * eps1, prior_weight=1.0)
    z = np.random.default_rng(1).standard_normal((3000, 3)).astype(np.float32)
    state = _run_chains(config, _gaussian_target(mu, s2), z, 1500)
    np.testing.assert_allclose(state.z.mean(axis=0), post_mean, atol=0.03)
    if method == "sgld":  # the Euler discretisation inflates the variance by 1 / (1 - eps1 * precision / 2) (about 1%)
        np.testing.assert_allclose(state.z.var(axis=0), post_var / (1 - eps1 * precision / 2), rtol=0.06)
    else:  # exact; and the unadjusted chain at this step size is measurably wrong
        np.testing.assert_allclose(state.z.var(axis=0), post_var, rtol=0.06)
        assert 0.3 < state.accepted.mean() / 1500 < 0.95
        unadjusted = _run_chains(replace(config, method="sgld"), _gaussian_target(mu, s2), z, 1500)
        assert np.all(unadjusted.z.var(axis=0) > post_var * 1.15)


def test_mala_finds_the_known_weights_of_two_modes():
    # 1-d target: mixture 0.25 N(-1, 0.5^2) + 0.75 N(1, 0.5^2) given as log p(y | z), no prior; the chains
    # start half in each mode, so they must cross the barrier between them to reach the right weights.
    weights, means, sd = np.array([0.25, 0.75]), np.array([-1.0, 1.0]), 0.5

    def target(z):
        x = z[:, :1].astype(np.float64)
        log_terms = np.log(weights) - 0.5 * ((x - means) / sd) ** 2
        top = log_terms.max(axis=1, keepdims=True)
        resp = np.exp(log_terms - top)
        logp = top[:, 0] + np.log(resp.sum(axis=1))
        resp /= resp.sum(axis=1, keepdims=True)
        grad = np.sum(resp * (means - x) / sd**2, axis=1, keepdims=True)
        return logp.astype(np.float32), grad.astype(np.float32)

    config = SamplerConfig(method="mala", steps=2000, eps1=0.1, eps2=0.2, prior_weight=0.0)
    z = np.random.default_rng(2).choice(means, size=(3000, 1)).astype(np.float32)  # half the chains start in each mode
    state = _run_chains(config, target, z, 2000)
    above_zero = sum(w * 0.5 * (1 + math.erf(m / (sd * math.sqrt(2)))) for w, m in zip(weights, means))  # 0.739
    assert np.mean(state.z[:, 0] > 0) == pytest.approx(above_zero, abs=0.03)
    assert np.mean(state.z[:, 0]) == pytest.approx(float(weights @ means), abs=0.05)


def test_sgld_step_applies_scales_noise_and_clip():
    config = SamplerConfig(steps=1, eps1=0.5, eps2=0.04, prior_weight=2.0, condition_scale=3.0, clip=(-1.0, 1.0))
    z = np.zeros((1, 3), dtype=np.float32)
    cond, prior_grad = np.array([[0.1, 0.0, 5.0]], np.float32), np.array([[0.0, 0.1, 0.0]], np.float32)
    noise = np.ones((1, 3), np.float32)

    class FixedPrior:
        def grad_log_prob(self, z):
            return prior_grad

    seen = []
    state = ChainState(z, np.zeros(1, np.float32), cond, np.zeros(1, np.int64))
    out = SGLDSampler(config, FixedPrior()).step(
        state, lambda z: seen.append(z.copy()) or (np.zeros(1, np.float32), z), noise, None, 0
    )
    expected = np.clip(0.5 * (3.0 * cond + 2.0 * prior_grad) + 0.2 * noise, -1.0, 1.0)
    np.testing.assert_allclose(out.z, expected, rtol=1e-6)
    np.testing.assert_allclose(seen[0], expected, rtol=1e-6)  # the target runs once, at the new point
    assert out.z.dtype == np.float32 and out.accepted.tolist() == [1]


def test_normalize_grad_divides_each_sample_by_its_mean_absolute_gradient():
    sampler = SGLDSampler(SamplerConfig(steps=1, eps1=1.0, eps2=0.0, prior_weight=0.0, normalize_grad=True))
    cond = np.array([[2.0, -2.0], [0.1, 0.3]], dtype=np.float32)
    state = ChainState(np.zeros_like(cond), np.zeros(2, np.float32), cond, np.zeros(2, np.int64))
    np.testing.assert_allclose(sampler.drift(state, 0), [[1.0, -1.0], [0.5, 1.5]], rtol=1e-6)


def test_step_size_decays_linearly_to_eps1_final():
    sampler = SGLDSampler(SamplerConfig(steps=5, eps1=1.0, eps1_final=0.2))
    assert [round(sampler.step_size(t), 6) for t in range(5)] == [1.0, 0.8, 0.6, 0.4, 0.2]
    assert SGLDSampler(SamplerConfig(steps=5, eps1=1.0)).step_size(4) == 1.0


def test_anneal_ramps_the_condition_scale_from_zero():
    sampler = SGLDSampler(SamplerConfig(steps=10, condition_scale=4.0, anneal=0.5))
    assert [sampler.condition_scale(t) for t in range(10)] == [0.8, 1.6, 2.4, 3.2, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert SGLDSampler(SamplerConfig(steps=10, condition_scale=4.0)).condition_scale(0) == 4.0


def test_mala_log_target_uses_the_exact_prior_density():
    prior = GaussianPrior(dim=2, mean=0.0, std=2.0)
    z = np.array([[1.0, -1.0]], np.float32)
    expected = -0.5 * np.sum((z / 2.0) ** 2) - 2 * (math.log(2.0) + 0.5 * math.log(2 * math.pi))
    assert prior.log_prob(z)[0] == pytest.approx(expected)
    sampler = SGLDSampler(SamplerConfig(method="mala", condition_scale=3.0, prior_weight=0.5), prior)
    state = ChainState(z, np.array([-2.0], np.float32), np.zeros_like(z), np.zeros(1, np.int64))
    assert sampler.log_target(state, 0)[0] == pytest.approx(3.0 * -2.0 + 0.5 * expected)


def test_cli_words_name_every_setting_that_has_a_flag():
    words = SamplerConfig(method="mala", steps=7, eps1_final=0.5, normalize_grad=True).cli_words()
    assert words[:4] == ["--sampler", "mala", "--steps", "7"] and "--normalize-grad" in words
    assert words[words.index("--eps1-final") + 1] == "0.5" and "--clip" not in words


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", -1),
        ("steps", 2.5),
        ("method", "euler"),
        ("anneal", 1.5),
        ("eps1", 0.0),
        ("eps1", math.nan),
        ("eps2", -1e-3),
        ("eps2", math.inf),
        ("prior_weight", -1.0),
        ("condition_scale", 0.0),
        ("eps1_final", 0.0),
        ("normalize_grad", "yes"),
        ("clip", (1.0, 0.0)),
    ],
)
def test_config_rejects_out_of_range_values(field, value):
    with pytest.raises(InputError, match="sampler" if field == "method" else field):
        SamplerConfig(**{field: value})


def test_config_updated_ignores_none_and_rejects_unknown_fields():
    config = SamplerConfig().updated(steps=7, eps1=None)
    assert config.steps == 7 and config.eps1 == SamplerConfig().eps1
    with pytest.raises(InputError, match="unknown sampler setting 'temperature'"):
        config.updated(temperature=1.0)
    with pytest.raises(InputError, match="mala sampler needs noise"):
        config.updated(method="mala", eps2=0.0)
    with pytest.raises(InputError, match="clipped"):
        config.updated(method="mala", clip=(0.0, 1.0))


def test_mixture_prior_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    dim, components = 3, 2
    tril = np.tril(rng.normal(0, 0.3, (components, dim, dim))) + np.eye(dim)[None] * 0.8
    prior = GaussianMixturePrior(
        weights=np.array([0.3, 0.7]), means=rng.normal(0, 1, (components, dim)), scale_tril=tril
    )

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
        weights=np.array([0.25, 0.75]),
        means=np.array([[-5.0, 0.0], [5.0, 0.0]]),
        scale_tril=np.stack([np.eye(2) * 0.5, np.eye(2) * 0.5]),
    )
    rng = np.random.default_rng(0)
    draws = np.stack([prior.sample(rng) for _ in range(4000)])
    assert draws.dtype == np.float32
    assert np.mean(draws[:, 0] > 0) == pytest.approx(0.75, abs=0.03)
    assert np.std(draws[draws[:, 0] > 0, 1]) == pytest.approx(0.5, rel=0.1)
