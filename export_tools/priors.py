"""Latent priors p(z) written into bundles (NumPy only): isotropic Gaussian and Gaussian mixture."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from export_tools import ExportError
from latent_onnx.priors import check_mixture_arrays


@dataclass(frozen=True)
class GaussianPrior:
    """Isotropic N(mean, std^2 I)."""

    mean: float = 0.0  # every coordinate's mean
    std: float = 1.0  # every coordinate's standard deviation, > 0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
            raise ExportError(f"GaussianPrior needs a finite mean and std > 0, got mean={self.mean}, std={self.std}")

    def sample(self, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
        """z [n, dim] float32."""
        return (self.mean + self.std * rng.standard_normal((n, dim))).astype(np.float32)

    def manifest_entry(self) -> dict:
        """The manifest object (docs/bundle-format.md, "Prior / init kinds")."""
        return {"kind": "gaussian", "mean": float(self.mean), "std": float(self.std)}


@dataclass(frozen=True, eq=False)
class GaussianMixturePrior:
    """sum_m weights[m] N(means[m], L_m L_m^T) with L_m = scale_tril[m]; arrays float64."""

    weights: np.ndarray  # [M], non-negative, sum 1
    means: np.ndarray  # [M, D]
    scale_tril: np.ndarray  # [M, D, D], lower-triangular Cholesky factors with positive diagonals

    def __post_init__(self) -> None:
        weights, means, tril = (np.asarray(a, dtype=np.float64) for a in (self.weights, self.means, self.scale_tril))
        problem = check_mixture_arrays(weights, means, tril, means.shape[-1] if means.ndim == 2 else 0)
        if problem is not None:  # the runtime's rule for a bundle's prior.npz
            raise ExportError(f"GaussianMixturePrior: {problem}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "scale_tril", tril)

    @property
    def components(self) -> int:
        return len(self.weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def fit(
        cls,
        codes: np.ndarray,
        labels: np.ndarray | None = None,
        components: int = 1,
        *,
        ridge: float = 1e-4,
        iterations: int = 20,
        seed: int = 0,
    ) -> GaussianMixturePrior:
        """Fit to codes [N, D]: one component per distinct label when `labels` [N] is given, otherwise
        `components` k-means clusters; each gets its sample mean and covariance (+ ridge * mean variance * I)."""
        codes = np.asarray(codes, dtype=np.float64)
        if codes.ndim != 2 or not np.isfinite(codes).all():
            raise ExportError(f"GaussianMixturePrior.fit needs finite codes [N, D], got shape {codes.shape}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (len(codes),):
                raise ExportError(
                    f"GaussianMixturePrior.fit: labels must have shape ({len(codes)},), got {labels.shape}"
                )
            _, assignment = np.unique(labels, return_inverse=True)
        else:
            assignment = _kmeans(codes, components, iterations, np.random.default_rng(seed))
        groups = [codes[assignment == m] for m in range(assignment.max() + 1)]
        if min(len(g) for g in groups) < 2:
            raise ExportError("GaussianMixturePrior.fit: every component needs at least 2 codes")
        dim = codes.shape[1]
        trils = []
        for group in groups:
            cov = np.atleast_2d(np.cov(group, rowvar=False))
            cov += ridge * max(float(np.trace(cov)) / dim, 1e-12) * np.eye(dim)
            trils.append(np.linalg.cholesky(cov))
        weights = np.array([len(g) for g in groups], dtype=np.float64) / len(codes)
        return cls(weights, np.stack([g.mean(0) for g in groups]), np.stack(trils))

    def sample(self, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
        """z [n, dim] float32 (dim must equal the mixture's D)."""
        if dim != self.dim:
            raise ExportError(f"GaussianMixturePrior has dimension {self.dim}, the bundle's latent dim is {dim}")
        return self.sample_with_components(n, rng)[0]

    def sample_with_components(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """z [n, D] float32 and the component each draw came from, int64 [n]."""
        which = rng.choice(self.components, size=n, p=self.weights)
        noise = rng.standard_normal((n, self.dim))
        return (self.means[which] + np.einsum("nij,nj->ni", self.scale_tril[which], noise)).astype(np.float32), which

    def npz_bytes(self) -> bytes:
        """The prior file (numpy .npz, no pickles): weights [M], means [M, D], scale_tril [M, D, D] float64."""
        buffer = io.BytesIO()
        np.savez(buffer, weights=self.weights, means=self.means, scale_tril=self.scale_tril)
        return buffer.getvalue()

    def manifest_entry(self, file: str, sha256: str) -> dict:
        """The manifest object for this prior stored in `file` with hash `sha256`."""
        return {"kind": "gaussian_mixture", "file": file, "sha256": sha256, "components": self.components}


Prior = GaussianPrior | GaussianMixturePrior


def _kmeans(codes: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster index [N] int of each code after Lloyd iterations from k distinct random codes."""
    if not 1 <= k <= len(codes):
        raise ExportError(f"GaussianMixturePrior.fit: components must be between 1 and {len(codes)}, got {k}")
    centres = codes[rng.choice(len(codes), size=k, replace=False)]
    for _ in range(iterations):
        distances = (codes**2).sum(1)[:, None] - 2 * codes @ centres.T + (centres**2).sum(1)[None, :]
        assignment = distances.argmin(1)
        centres = np.stack(
            [codes[assignment == m].mean(0) if (assignment == m).any() else centres[m] for m in range(k)]
        )
    return assignment
