"""Langevin samplers on the latent code, in NumPy, apart from the pipeline's loop (as diffusers keeps a
scheduler's `step()` apart from its pipeline).

The target is pi_t(z) = p(y | z) ** s_t * p(z) ** lambda, with s_t the condition scale at step t
(constant, or annealed from 0 over the first part of the run) and lambda the prior weight.

- "sgld" (the paper):  z' = clip(z + eps1_t * drift(z) + sqrt(eps2) * noise),
  drift(z) = s_t * grad log p(y | z) + lambda * grad log p(z)
- "mala": the same proposal, accepted with the Metropolis-Hastings probability
  min(1, pi_t(z') q(z | z') / (pi_t(z) q(z' | z))), q(. | z) = N(z + eps1_t * drift(z), eps2 I);
  the gradient graphs return log p(y | z) and a Gaussian prior's density is exact, so the ratio is exact.

Every step costs one run of the gradient graph, at the new point; the state carries log p(y | z) and
its gradient from one step to the next.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from .errors import InputError

MAX_STEPS = 1_000_000
_F32_MAX = float(np.finfo(np.float32).max)  # settings are used in float32 arithmetic
STARTS = ("init", "conditioned", "image")  # "image": z_0 is the encoder's code of an init image (set by it)
METHODS = ("sgld", "mala")

Target = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]  # z float32 [B, D] -> (logp [B], grad [B, D])


def _setting(default, help: str, flag: str | None = None, choices: tuple | None = None):
    """A SamplerConfig field; `help`, `flag` and `choices` make its command-line option (flag None: no option)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


@dataclass(frozen=True)
class SamplerConfig:
    """Settings of one sampling run; checked on construction (InputError names the bad field).

    The single declaration of every sampler setting: the manifest's `sampler` keys, the CLI's options,
    the server's request fields and the reproduce command are all made from these fields.
    """

    method: str = _setting(
        "sgld", "Stepper: sgld (the paper's update) or mala (Metropolis-adjusted).", "--sampler", METHODS
    )
    steps: int = _setting(200, "Langevin steps (0 decodes the start).", "--steps")
    eps1: float = _setting(0.01, "Step size on the gradient term (> 0).", "--eps1")
    eps2: float = _setting(1e-4, "Variance of the injected noise per step (>= 0; std sqrt(eps2)).", "--eps2")
    prior_weight: float = _setting(1.0, "Weight lambda of grad log p(z) (>= 0).", "--prior-weight")
    condition_scale: float = _setting(1.0, "Weight s of the class / caption log-likelihood (> 0).", "--condition-scale")
    anneal: float = _setting(
        0.0, "Fraction of the run over which the condition scale ramps up from 0 (0: none).", "--anneal"
    )
    eps1_final: float | None = _setting(
        None, "eps1 decays linearly to this over the run (default: constant).", "--eps1-final"
    )
    normalize_grad: bool = _setting(
        False, "PPGN: divide each chain's condition gradient by its mean |value|.", "--normalize-grad"
    )
    clip: tuple[float, float] | None = _setting(None, "z clipped to (lo, hi) after every step.")
    # "init": z_0 from latent.init (else the prior); "conditioned": z_0 from the mixture prior with each
    # component m drawn with probability prop. to weight_m * p(condition | mean_m) ** condition_scale
    start: str = _setting(
        "init",
        "Chain start: the bundle's init, mixture components weighted by the condition, or"
        " image (--init-image's code; set by --init-image).",
        "--start",
        STARTS,
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"sampler must be one of {', '.join(METHODS)}, not {self.method!r}")
        check_int("steps", self.steps, 0, MAX_STEPS)
        _check_number("eps1", self.eps1, strict=True)
        _check_number("eps2", self.eps2, strict=False)
        _check_number("prior_weight", self.prior_weight, strict=False)
        _check_number("condition_scale", self.condition_scale, strict=True)
        _check_number("anneal", self.anneal, strict=False)
        if self.anneal > 1:
            raise InputError(f"anneal must be a fraction of the run from 0 to 1, not {self.anneal!r}")
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
        if self.method == "mala" and self.eps2 == 0:
            raise InputError("the mala sampler needs noise: eps2 must be > 0 (true Langevin is eps2 = 2 * eps1)")
        if self.method == "mala" and self.clip is not None:
            raise InputError("the mala sampler's accept ratio does not hold with a clipped latent; use --sampler sgld")

    def updated(self, **overrides) -> SamplerConfig:
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

    def cli_words(self) -> list[str]:
        """These settings as `latent-onnx generate` options (every field that has a flag, set explicitly)."""
        words = []
        for spec in fields(self):
            flag, value = spec.metadata["flag"], getattr(self, spec.name)
            if flag is None or value is None:
                continue
            if isinstance(value, (bool, np.bool_)):
                words.append(flag if value else "--no-" + flag[2:])
            else:
                words += [flag, value if isinstance(value, str) else repr(value)]
        return words


SAMPLER_FIELDS = tuple(f.name for f in fields(SamplerConfig))


def check_int(name: str, value, low: int, high: int) -> int:
    """`value` as an int; InputError unless it is an integer (not a bool) from `low` to `high`."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not low <= value <= high:
        raise InputError(f"{name} must be an integer from {low} to {high}, not {value!r}")
    return int(value)


def _check_number(name: str, value, strict: bool):
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not abs(value) <= _F32_MAX or value < 0 or (strict and value == 0):
        raise InputError(
            f"{name} must be a finite number {'>' if strict else '>='} 0 (at most {_F32_MAX:.3g}, float32),"
            f" not {value!r}"
        )


@dataclass
class ChainState:
    """Chains at one point: z float32 [B, D], logp float32 [B] = log p(y | z) (unscaled), grad float32 [B, D]
    its gradient, accepted int64 [B] the proposals each chain accepted so far."""

    z: np.ndarray
    logp: np.ndarray
    grad: np.ndarray
    accepted: np.ndarray

    @classmethod
    def at(cls, z: np.ndarray, target: Target) -> ChainState:
        """The state of chains at z under `target` (one run of its graph)."""
        z = np.ascontiguousarray(z, dtype=np.float32)
        logp, grad = target(z)
        return cls(z, logp, grad, np.zeros(len(z), dtype=np.int64))


class SGLDSampler:
    """The arithmetic of one step (sgld or mala, per `config.method`); stateless, so one sampler serves
    any number of threads. `prior` gives grad_log_prob(z) and, for mala, log_prob(z)."""

    def __init__(self, config: SamplerConfig, prior=None):
        self.config = config
        self.prior = prior

    def step_size(self, step_index: int) -> float:
        """eps1 at step `step_index` (0-based): constant, or linear from eps1 to eps1_final."""
        c = self.config
        if c.eps1_final is None or c.steps <= 1:
            return c.eps1
        return c.eps1 + (c.eps1_final - c.eps1) * step_index / (c.steps - 1)

    def condition_scale(self, step_index: int) -> float:
        """s_t: condition_scale, ramped linearly from 0 over the first `anneal` of the run."""
        c = self.config
        ramp = c.anneal * c.steps
        if ramp <= 0:
            return c.condition_scale
        return c.condition_scale * min(1.0, (step_index + 1) / ramp)

    def drift(self, state: ChainState, step_index: int) -> np.ndarray:
        """s_t * grad log p(y | z) (optionally normalised) + lambda * grad log p(z), float32 [B, D]."""
        c = self.config
        grad = state.grad
        if c.normalize_grad:
            scale = np.mean(np.abs(grad), axis=1, keepdims=True)
            grad = grad / np.maximum(scale, np.finfo(np.float32).tiny)
        drift = np.multiply(grad, self.condition_scale(step_index))  # a new array: updated in place from here on
        if c.prior_weight and self.prior is not None:
            prior_grad = self.prior.grad_log_prob(state.z)
            drift += prior_grad if c.prior_weight == 1 else c.prior_weight * prior_grad  # x * 1 is x: the same numbers
        return drift

    def log_target(self, state: ChainState, step_index: int) -> np.ndarray:
        """log pi_t(z) up to a constant, float64 [B]."""
        value = self.condition_scale(step_index) * state.logp.astype(np.float64)
        if self.config.prior_weight and self.prior is not None:
            value = value + self.config.prior_weight * self.prior.log_prob(state.z)
        return value

    def step(
        self, state: ChainState, target: Target, noise: np.ndarray, uniform: np.ndarray | None, step_index: int
    ) -> ChainState:
        """The next state from `state`, standard-normal `noise` float32 [B, D] and, for mala, `uniform`
        float [B] in [0, 1) (the accept draws); one run of `target`, at the proposal. A diverging chain
        gives non-finite values silently (the caller checks them)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return self._step(state, target, noise, uniform, step_index)

    def _step(
        self, state: ChainState, target: Target, noise: np.ndarray, uniform: np.ndarray | None, step_index: int
    ) -> ChainState:
        c = self.config
        # in place on new arrays (the same float32 operations, in the same order, as written out above)
        mean = self.drift(state, step_index)
        mean *= self.step_size(step_index)
        mean += state.z
        proposal = np.multiply(noise, math.sqrt(c.eps2))
        proposal += mean
        if c.clip is not None:
            np.clip(proposal, c.clip[0], c.clip[1], out=proposal)
        proposed = ChainState.at(proposal, target)
        if c.method == "sgld":
            proposed.accepted = state.accepted + 1
            return proposed
        # mala: log alpha = log pi(z') - log pi(z) + log q(z | z') - log q(z' | z)
        reverse_mean = proposed.z + self.step_size(step_index) * self.drift(proposed, step_index)
        log_q_forward = -np.sum((proposed.z - mean).astype(np.float64) ** 2, axis=1) / (2 * c.eps2)
        log_q_reverse = -np.sum((state.z - reverse_mean).astype(np.float64) ** 2, axis=1) / (2 * c.eps2)
        log_alpha = (
            self.log_target(proposed, step_index) - self.log_target(state, step_index) + log_q_reverse - log_q_forward
        )
        accept = np.log(np.maximum(uniform, np.finfo(np.float64).tiny)) < log_alpha  # NaN compares False: rejected
        keep = ~accept
        proposed.z[keep] = state.z[keep]
        proposed.logp[keep] = state.logp[keep]
        proposed.grad[keep] = state.grad[keep]
        proposed.accepted = state.accepted + accept
        return proposed
