"""The SGLD update on the latent code, in NumPy (DESIGN §1), separate from the pipeline's loop.

z_{t+1} = clip(z_t + eps1_t * (condition_scale * g_cond + prior_weight * g_prior) + sqrt(eps2) * noise)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from .errors import InputError

MAX_STEPS = 1_000_000
STARTS = ("init", "conditioned")


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of one SGLD run; checked on construction (InputError names the bad field)."""

    steps: int = 200  # number of updates, 1..MAX_STEPS
    eps1: float = 0.01  # step size on the gradient term (> 0); the start value when decaying
    eps2: float = 1e-4  # variance of the injected Gaussian noise (>= 0); its std is sqrt(eps2)
    prior_weight: float = 1.0  # lambda: weight of grad log p(z) (>= 0; 0 drops the prior term)
    condition_scale: float = 1.0  # weight of the conditional gradient (> 0)
    eps1_final: float | None = None  # None: constant eps1; else eps1 decays linearly to this over the run
    normalize_grad: bool = False  # PPGN: divide each sample's conditional gradient by its mean |value|
    clip: tuple[float, float] | None = None  # None, or (lo, hi): z clipped to this range after every step
    # "init": z_0 from latent.init (else the prior); "conditioned": z_0 from the mixture prior with each
    # component m drawn with probability prop. to weight_m * p(condition | mean_m) ** condition_scale
    start: str = "init"

    def __post_init__(self):
        check_int("steps", self.steps, 1, MAX_STEPS)
        _check_number("eps1", self.eps1, strict=True)
        _check_number("eps2", self.eps2, strict=False)
        _check_number("prior_weight", self.prior_weight, strict=False)
        _check_number("condition_scale", self.condition_scale, strict=True)
        if self.eps1_final is not None:
            _check_number("eps1_final", self.eps1_final, strict=True)
        if not isinstance(self.normalize_grad, (bool, np.bool_)):
            raise InputError(f"normalize_grad must be true or false, not {self.normalize_grad!r}")
        if self.start not in STARTS:
            raise InputError(f"start must be one of {', '.join(STARTS)}, not {self.start!r}")
        if self.clip is not None:
            try:
                lo, hi = (float(bound) for bound in self.clip)
            except (TypeError, ValueError):
                lo = hi = math.nan
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise InputError(f"clip must be (lo, hi) with finite lo < hi, not {self.clip!r}")

    def updated(self, **overrides) -> "SamplerConfig":
        """A copy with the given fields replaced (None values are ignored); unknown fields are an InputError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(f"unknown sampler setting '{unknown[0]}' (known: {', '.join(sorted(known))})")
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})

    def to_dict(self) -> dict:
        data = asdict(self)
        data["clip"] = list(self.clip) if self.clip is not None else None
        return data


def check_int(name: str, value, low: int, high: int) -> int:
    """`value` as an int; InputError unless it is an integer (not a bool) from `low` to `high`."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not low <= value <= high:
        raise InputError(f"{name} must be an integer from {low} to {high}, not {value!r}")
    return int(value)


def _check_number(name: str, value, strict: bool):
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (strict and value == 0):
        raise InputError(f"{name} must be a finite number {'>' if strict else '>='} 0, not {value!r}")


class SGLDSampler:
    """The arithmetic of one SGLD step; stateless, so one sampler serves any number of threads."""

    def __init__(self, config: SamplerConfig):
        self.config = config

    def step_size(self, step_index: int) -> float:
        """eps1 at step `step_index` (0-based): constant, or linear from eps1 to eps1_final."""
        c = self.config
        if c.eps1_final is None or c.steps == 1:
            return c.eps1
        return c.eps1 + (c.eps1_final - c.eps1) * step_index / (c.steps - 1)

    def step(
        self, z: np.ndarray, cond_grad: np.ndarray, prior_grad: np.ndarray | None, noise: np.ndarray, step_index: int
    ) -> np.ndarray:
        """z_next float32 [B, D] from z, cond_grad, prior_grad (None when prior_weight is 0), noise (all [B, D])."""
        c = self.config
        if c.normalize_grad:
            scale = np.mean(np.abs(cond_grad), axis=1, keepdims=True)
            cond_grad = cond_grad / np.maximum(scale, np.finfo(np.float32).tiny)
        drift = c.condition_scale * cond_grad
        if c.prior_weight and prior_grad is not None:
            drift = drift + c.prior_weight * prior_grad
        z_next = z + self.step_size(step_index) * drift + math.sqrt(c.eps2) * noise
        if c.clip is not None:
            np.clip(z_next, c.clip[0], c.clip[1], out=z_next)
        return z_next.astype(np.float32, copy=False)
