"""Latent priors p(z) in NumPy: drawing z_0 and the gradient of log p(z) for the sampler.

All arrays are float32 [B, D] at the interface; mixtures are set up in float64, and their gradient
runs its products in float32 and its sums in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GaussianPrior:
    """Isotropic N(mean, std^2 I) in D dimensions."""

    dim: int  # D
    mean: float  # the same mean for every coordinate
    std: float  # > 0

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One draw, float32 [D]."""
        return (self.mean + self.std * rng.standard_normal(self.dim)).astype(np.float32)

    def grad_log_prob(self, z: np.ndarray) -> np.ndarray:
        """d log p / dz for z float32 [B, D] -> float32 [B, D]: (mean - z) / std^2 (no division for std 1:
        the same numbers)."""
        grad = np.subtract(np.float32(self.mean), z, dtype=np.float32)
        if self.std != 1:
            grad /= self.std * self.std
        return grad

    def log_prob(self, z: np.ndarray) -> np.ndarray:
        """log p(z) float64 [B] for z float32 [B, D]."""
        d = (z.astype(np.float64) - self.mean) / self.std
        return -0.5 * np.sum(d * d, axis=1) - self.dim * (math.log(self.std) + 0.5 * math.log(2 * math.pi))

    def describe(self) -> str:
        return f"gaussian N({self.mean:g}, {self.std:g}^2 I)"


@dataclass(frozen=True)
class GaussianMixturePrior:
    """Mixture of M full-covariance Gaussians, covariance_m = L_m L_m^T.

    weights [M] float64 (sum 1), means [M, D] float64, scale_tril [M, D, D] float64 (lower, diag > 0).
    """

    weights: np.ndarray
    means: np.ndarray
    scale_tril: np.ndarray

    def __post_init__(self):
        inverse = np.linalg.inv(self.scale_tril)  # [M, D, D], lower triangular
        log_det = np.log(np.diagonal(self.scale_tril, axis1=1, axis2=2)).sum(axis=1)
        with np.errstate(divide="ignore"):  # a zero-weight component gets log weight -inf
            object.__setattr__(self, "_log_norm", np.log(self.weights) - log_det)
        precision = np.swapaxes(inverse, 1, 2) @ inverse  # Sigma_m^-1 [M, D, D], symmetric
        precision_means = np.einsum("mij,mj->mi", precision, self.means)  # Sigma_m^-1 mu_m [M, D]
        object.__setattr__(self, "_precision64", precision)
        object.__setattr__(self, "_precision", precision.astype(np.float32))
        object.__setattr__(self, "_precision_means", precision_means)
        object.__setattr__(self, "_precision_means32", precision_means.astype(np.float32))
        object.__setattr__(
            self, "_mean_quad", np.einsum("mi,mi->m", self.means, precision_means)
        )  # mu_m' Sigma_m^-1 mu_m

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, rng: np.random.Generator, component_probs: np.ndarray | None = None) -> np.ndarray:
        """One draw, float32 [D]: pick a component (by `component_probs` [M] if given, else the weights),
        then mean + L @ normal."""
        component = rng.choice(len(self.weights), p=self.weights if component_probs is None else component_probs)
        noise = rng.standard_normal(self.dim)
        return (self.means[component] + self.scale_tril[component] @ noise).astype(np.float32)

    def grad_log_prob(self, z: np.ndarray) -> np.ndarray:
        """d log p / dz for z float32 [B, D] -> float32 [B, D]: -sum_m resp_m(z) Sigma_m^-1 (z - mu_m).

        The products Sigma_m^-1 z run in float32 (one small matmul per component, which BLAS keeps
        on one thread); the quadratic forms z'Sz - 2 mu'Sz + mu'S mu and the responsibilities are
        summed in float64. About 5x faster than all-float64 at B = 64, relative error about 1e-6.
        """
        z = np.asarray(z, dtype=np.float32)
        with np.errstate(all="ignore"):  # a diverging chain overflows here; the sampler reports it
            if len(z) == 1:  # one row takes NumPy's matrix-vector path, which rounds differently: keep batches alike
                return self._grad_log_prob(np.repeat(z, 2, axis=0))[:1]
            return self._grad_log_prob(z)

    def _grad_log_prob(self, z: np.ndarray) -> np.ndarray:
        pulled_z = np.matmul(z, self._precision)  # (Sigma_m^-1 z_b)' for every m, [M, B, D]
        quad = (
            np.einsum("bd,mbd->mb", z, pulled_z, dtype=np.float64)
            - 2.0 * (self._precision_means @ z.T.astype(np.float64))
            + self._mean_quad[:, None]
        )  # [M, B]
        log_resp = self._log_norm[:, None] - 0.5 * quad
        log_resp -= log_resp.max(axis=0, keepdims=True)
        resp = np.exp(log_resp)
        resp /= resp.sum(axis=0, keepdims=True)
        resp = resp.astype(np.float32)
        return resp.T @ self._precision_means32 - np.einsum("mb,mbd->bd", resp, pulled_z)

    def log_prob(self, z: np.ndarray) -> np.ndarray:
        """log p(z) float64 [B] for z float32 [B, D] (log-sum-exp over the components, in float64)."""
        z = np.asarray(z, dtype=np.float64)
        quad = (
            np.einsum("bd,mde,be->mb", z, self._precision64, z)
            - 2.0 * (self._precision_means @ z.T)
            + self._mean_quad[:, None]
        )  # [M, B]
        log_terms = self._log_norm[:, None] - 0.5 * quad - 0.5 * self.dim * math.log(2 * math.pi)
        top = log_terms.max(axis=0)
        return top + np.log(np.exp(log_terms - top).sum(axis=0))

    def conditioned_probs(self, log_likelihood: np.ndarray, scale: float) -> np.ndarray:
        """Component probabilities float64 [M] prop. to weight_m * exp(scale * log_likelihood[m])."""
        with np.errstate(divide="ignore"):
            logits = np.log(self.weights) + scale * log_likelihood.astype(np.float64)
        probs = np.exp(logits - logits.max())
        return probs / probs.sum()

    def describe(self) -> str:
        return f"gaussian mixture ({len(self.weights)} components)"


def check_mixture_arrays(weights, means, scale_tril, dim: int) -> str | None:
    """Return what is wrong with mixture arrays for dimension `dim`, or None when they are usable."""
    if weights.ndim != 1 or len(weights) < 1:
        return "weights must be a non-empty 1-d array"
    m = len(weights)
    if means.shape != (m, dim):
        return f"means must have shape [{m}, {dim}], not {list(means.shape)}"
    if scale_tril.shape != (m, dim, dim):
        return f"scale_tril must have shape [{m}, {dim}, {dim}], not {list(scale_tril.shape)}"
    for name, array in (("weights", weights), ("means", means), ("scale_tril", scale_tril)):
        if not np.all(np.abs(array) <= np.finfo(np.float32).max):  # NaN fails too
            return f"{name} has values that are not finite float32 numbers"
    if np.any(weights < 0) or not math.isclose(float(weights.sum()), 1.0, abs_tol=1e-6):
        return "weights must be non-negative and sum to 1"
    if np.any(np.triu(scale_tril, k=1) != 0):
        return "scale_tril must be lower triangular"
    if np.any(np.diagonal(scale_tril, axis1=1, axis2=2) <= 0):
        return "scale_tril must have a positive diagonal"
    with np.errstate(all="ignore"):
        inverse = np.linalg.inv(scale_tril)
        precision = np.swapaxes(inverse, 1, 2) @ inverse
    if not np.all(np.abs(precision) <= np.finfo(np.float32).max):  # the sampler's products run in float32
        return "scale_tril is too close to singular (its precision overflows float32)"
    return None
