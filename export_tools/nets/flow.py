"""A Real NVP flow (Dinh et al. 2017) between u ~ N(0, I) and a generator's codes z, both [B, D] float32.

`forward(u) -> z` decodes a Gaussian draw to a code; `inverse(z) -> (u, log|det du/dz|)` is exact.
Each affine coupling keeps a random half of the coordinates (its mask) and moves the other half:
z = m * u + (1 - m) * (u * exp(s(m * u)) + t(m * u)), with s bounded by a learned scale times tanh.
With a flow fitted to the encoder's codes, every u decodes to a code where the data lies, and the
prior of the sampler's space is exactly N(0, I): its gradient is -u.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class AffineCoupling(nn.Module):
    """One coupling: a mask [D] (1 = kept, conditions the rest) and an MLP giving (s, t) [B, D]."""

    def __init__(self, mask: torch.Tensor, hidden: int):
        super().__init__()
        dim = mask.numel()
        self.register_buffer("mask", mask.float())
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * dim)
        )
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity map
        nn.init.zeros_(self.net[-1].bias)
        self.log_scale_limit = nn.Parameter(torch.zeros(dim))

    def shift_and_log_scale(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = self.net(kept).chunk(2, dim=1)
        moved = 1.0 - self.mask
        s = torch.exp(self.log_scale_limit) * torch.tanh(raw_s) * moved
        return s, t * moved

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s, t = self.shift_and_log_scale(u * self.mask)
        return u * torch.exp(s) + t

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.shift_and_log_scale(z * self.mask)
        return (z - t) * torch.exp(-s), -s.sum(dim=1)


class RealNVP(nn.Module):
    """u [B, D] <-> z [B, D] through `couplings` affine couplings with seeded random half masks."""

    def __init__(self, dim: int, couplings: int = 12, hidden: int = 256, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        masks = []
        for index in range(couplings):
            if index % 2 == 0:
                order = torch.randperm(dim, generator=generator)
                mask = torch.zeros(dim)
                mask[order[: dim // 2]] = 1.0
            else:  # the complement of the previous mask, so every coordinate moves every two couplings
                mask = 1.0 - masks[-1]
            masks.append(mask)
        self.layers = nn.ModuleList(AffineCoupling(mask, hidden) for mask in masks)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """z = f(u)."""
        for layer in self.layers:
            u = layer(u)
        return u

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u = f^-1(z), log|det d f^-1 / dz| [B])."""
        log_det = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            z, layer_log_det = layer.inverse(z)
            log_det = log_det + layer_log_det
        return z, log_det

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) [B] under the flow: log N(f^-1(z); 0, I) + log|det|."""
        u, log_det = self.inverse(z)
        return -0.5 * (u * u).sum(dim=1) - 0.5 * u.shape[1] * math.log(2 * math.pi) + log_det


class FlowGenerator(nn.Module):
    """The bundle's generator in the flow's space: u [B, D] -> generator(f(u)) [B, 3, H, W]."""

    def __init__(self, flow: RealNVP, generator: nn.Module):
        super().__init__()
        self.flow = flow
        self.generator = generator

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.generator(self.flow(u))


class FlowEncoder(nn.Module):
    """The bundle's encoder in the flow's space: x [B, 3, H, W] -> f^-1(encoder(x)) [B, D]."""

    def __init__(self, flow: RealNVP, encoder: nn.Module):
        super().__init__()
        self.flow = flow
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.inverse(self.encoder(x))[0]


def flow_loss(flow: RealNVP, z: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per dimension of codes z [B, D] (nats)."""
    return -flow.log_prob(z).mean() / z.shape[1]
