"""The same SGLD method in PyTorch eager: what a researcher would run instead of the runtime.

Per step: autograd gradient of sum_k w_k log_softmax(net(z))_k with respect to z, then the
runtime's update (normalised gradient when the sampler says so, prior term, noise, clip), all in
torch on the CPU with the same number of threads.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

from latent_onnx import SamplerConfig


def eager_step_seconds(
    logp_module,
    weights: np.ndarray,
    z0: np.ndarray,
    config: SamplerConfig,
    steps: int,
    threads: int,
    prior_std: float = 1.0,
) -> float:
    """Median seconds per SGLD step of `logp_module(z, weights) -> logp [B]` in PyTorch eager.

    weights float32 [B, K], z0 float32 [B, D]; `steps` + 1 steps run, the first (warm-up) is not counted.
    The prior term assumes the bundle's isotropic Gaussian N(0, prior_std^2 I). torch runs on `threads`
    threads (its setting is restored afterwards).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _median_step(logp_module, weights, z0, config, steps, prior_std)
    finally:
        torch.set_num_threads(previous)


def _median_step(logp_module, weights, z0, config, steps, prior_std) -> float:
    import torch

    generator = torch.Generator().manual_seed(0)
    w = torch.from_numpy(weights)
    z = torch.from_numpy(z0).clone()
    sigma = math.sqrt(config.eps2)
    stamps = []
    for _ in range(steps + 1):
        z.requires_grad_(True)
        (grad,) = torch.autograd.grad(logp_module(z, w).sum(), z)
        with torch.no_grad():
            if config.normalize_grad:
                grad = grad / grad.abs().mean(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            drift = config.condition_scale * grad
            if config.prior_weight:
                drift = drift - config.prior_weight * z / prior_std**2
            z = z + config.eps1 * drift + sigma * torch.randn(z.shape, generator=generator)
            if config.clip is not None:
                z = z.clamp(*config.clip)
        stamps.append(time.perf_counter())
    return statistics.median(np.diff(stamps))
