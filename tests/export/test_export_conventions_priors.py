"""PixelConvention arithmetic and the priors written into bundles."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import distributions as dist

from export_tools import ExportError
from export_tools.conventions import PixelConvention
from export_tools.priors import GaussianMixturePrior, GaussianPrior
from latent_onnx.priors import GaussianMixturePrior as RuntimeMixture


def test_to_pixels_scales_rounds_clips_flips_and_crops():
    x = torch.zeros(1, 3, 3, 4)
    x[0, 0] = 0.5  # BGR: blue
    x[0, 2, 1, 2] = 2.0  # red, out of range at one pixel
    x[0, 1, 2, 3] = 0.1 / 255  # rounds down to 0
    convention = PixelConvention(scale=255.0, channel_order="BGR", crop=(1, 2))
    image = convention.to_pixels(x, (2, 2)).numpy()
    assert image.dtype == np.uint8 and image.shape == (1, 2, 2, 3)
    assert image[0, 0, 0].tolist() == [255, 0, 128]  # RGB: red clipped to 255, blue 0.5 * 255 = 127.5 -> 128
    assert image[0, 1, 1].tolist() == [0, 0, 128]


def test_mean_is_added_in_the_network_channel_order():
    caffe = PixelConvention(scale=1.0, mean=(104.0, 117.0, 123.0), channel_order="BGR")
    image = caffe.to_pixels(torch.zeros(1, 3, 1, 1), (1, 1)).numpy()
    assert image[0, 0, 0].tolist() == [123, 117, 104]


@pytest.mark.parametrize(
    "convention",
    [
        PixelConvention(),
        PixelConvention(127.5, (1.0, 1.0, 1.0), "BGR"),
        PixelConvention(1.0, (104.0, 117.0, 123.0), "BGR"),
    ],
)
def test_from_pixels_inverts_to_pixels(convention):
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8))
    x = convention.from_pixels(image)
    assert x.shape == (2, 3, 5, 4) and x.dtype == torch.float32
    assert torch.equal(convention.to_pixels(x, (5, 4)), image)


@pytest.mark.parametrize(
    "kwargs", [dict(scale=0.0), dict(mean=(1.0, 2.0)), dict(channel_order="bgr"), dict(crop=(-1, 0))]
)
def test_bad_conventions_are_refused(kwargs):
    with pytest.raises(ExportError, match="PixelConvention"):
        PixelConvention(**kwargs)


def test_mixture_fit_with_labels_has_one_component_per_label():
    rng = np.random.default_rng(0)
    labels = np.repeat([2, 5], [300, 100])
    codes = rng.standard_normal((400, 3)) * 0.5 + np.where(labels[:, None] == 2, -4.0, 4.0)
    prior = GaussianMixturePrior.fit(codes, labels)
    np.testing.assert_allclose(prior.weights, [0.75, 0.25])
    np.testing.assert_allclose(prior.means, [codes[:300].mean(0), codes[300:].mean(0)])
    cov = prior.scale_tril @ np.swapaxes(prior.scale_tril, 1, 2)
    np.testing.assert_allclose(cov[0], np.cov(codes[:300], rowvar=False), atol=1e-3)


def test_mixture_fit_without_labels_finds_the_clusters():
    rng = np.random.default_rng(1)
    codes = np.concatenate([rng.standard_normal((150, 2)) + 10.0, rng.standard_normal((50, 2)) - 10.0])
    prior = GaussianMixturePrior.fit(codes, components=2)
    order = np.argsort(prior.weights)
    np.testing.assert_allclose(prior.weights[order], [0.25, 0.75])
    np.testing.assert_allclose(prior.means[order], [[-10.0, -10.0], [10.0, 10.0]], atol=0.4)


def test_mixture_file_loads_without_pickles_and_runtime_gradient_matches_pytorch():
    prior = GaussianMixturePrior.fit(np.random.default_rng(2).standard_normal((100, 4)), components=3)
    arrays = np.load(io.BytesIO(prior.npz_bytes()), allow_pickle=False)
    runtime = RuntimeMixture(arrays["weights"], arrays["means"], arrays["scale_tril"])
    z = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    mixture = dist.MixtureSameFamily(
        dist.Categorical(torch.from_numpy(prior.weights)),
        dist.MultivariateNormal(torch.from_numpy(prior.means), scale_tril=torch.from_numpy(prior.scale_tril)),
    )
    z_torch = torch.from_numpy(z).double().requires_grad_(True)
    (expected,) = torch.autograd.grad(mixture.log_prob(z_torch).sum(), z_torch)
    np.testing.assert_allclose(runtime.grad_log_prob(z), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_samples_follow_the_prior():
    rng = np.random.default_rng(4)
    z = GaussianPrior(1.0, 2.0).sample(20000, 3, rng)
    assert z.dtype == np.float32 and abs(z.mean() - 1.0) < 0.05 and abs(z.std() - 2.0) < 0.05
    mixture = GaussianMixturePrior(np.array([1.0]), np.array([[3.0, -3.0]]), np.array([[[1.0, 0.0], [0.5, 0.5]]]))
    z = mixture.sample(20000, 2, rng)
    np.testing.assert_allclose(np.cov(z, rowvar=False), [[1.0, 0.5], [0.5, 0.5]], atol=0.05)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ((np.array([0.5, 0.6]), np.zeros((2, 2)), np.stack([np.eye(2)] * 2)), "sum to 1"),
        ((np.array([1.0]), np.zeros((1, 2)), np.eye(2)[None] * -1), "positive diagonal"),
        ((np.array([1.0]), np.zeros((1, 3)), np.eye(2)[None]), "must have shape"),
        ((np.array([1.0]), np.full((1, 2), np.nan), np.eye(2)[None]), "not finite"),
    ],
)
def test_bad_mixtures_are_refused(arrays, message):
    with pytest.raises(ExportError, match=message):
        GaussianMixturePrior(*arrays)


def test_bad_fits_are_refused():
    with pytest.raises(ExportError, match="at least 2 codes"):
        GaussianMixturePrior.fit(np.zeros((3, 2)), labels=np.array([0, 1, 1]))
    with pytest.raises(ExportError, match="components must be between"):
        GaussianMixturePrior.fit(np.zeros((3, 2)), components=4)
    with pytest.raises(ExportError, match="GaussianPrior"):
        GaussianPrior(0.0, 0.0)
