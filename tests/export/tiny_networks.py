"""Tiny PyTorch networks of every role and a BundleSpec using them (for the export tests).

Sizes: D=6 latent, the generator draws 10x10 BGR images in [-1, 1] that the convention crops to
8x8 RGB; K=3 classes; a 6-word vocabulary with T=4 caption tokens.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from export_tools.bundle_writer import BundleSpec
from export_tools.conventions import PixelConvention
from export_tools.priors import GaussianMixturePrior, GaussianPrior

D, K, T = 6, 3, 4
IMAGE_HW = (8, 8)
CLASSES = ["t-shirt", "sneaker", "ankle boot, boot"]
VOCABULARY = ["<eos>", "a", "red", "blue", "sneaker", "bag"]
CONVENTION = PixelConvention(scale=127.5, mean=(1.0, 1.0, 1.0), channel_order="BGR", crop=(1, 1))


class Generator(nn.Module):
    """z [B, D] -> x [B, 3, 10, 10] BGR in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(D, 4 * 5 * 5)
        self.deconv = nn.ConvTranspose2d(4, 3, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.deconv(nn.functional.leaky_relu(self.fc(z), 0.2).view(-1, 4, 5, 5)))


class Encoder(nn.Module):
    """x [B, 3, 8, 8] -> z [B, D]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)
        self.fc = nn.Linear(4 * 4 * 4, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class ImageClassifier(nn.Module):
    """x [B, 3, 10, 10] (generator output) -> logits [B, K], through conv, max pooling, local response
    normalisation (CaffeNet's layers, whose backward ops need rewriting for ONNX) and a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, 1, 1)
        self.norm = nn.LocalResponseNorm(size=3, alpha=0.1, beta=0.75, k=1.0)
        self.fc = nn.Linear(5 * 6 * 6, K)  # pooled to 6x6 (ceil rounding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.max_pool2d(torch.relu(self.conv(x)), 3, 2, padding=1, ceil_mode=True)
        return self.fc(self.norm(pooled).flatten(1))


class Captioner(nn.Module):
    """(z [B, D], tokens [B, T] int64, mask [B, T]) -> logp [B]; one explicit LSTM cell, <eos> (0) as start."""

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.embed = nn.Embedding(len(VOCABULARY), 5)
        self.cell = nn.LSTMCell(5 + D, hidden)
        self.predict = nn.Linear(hidden, len(VOCABULARY))

    def forward(self, z: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = c = z.new_zeros(z.shape[0], self.cell.hidden_size)
        previous = torch.zeros_like(tokens[:, 0])
        logp = z.new_zeros(z.shape[0])
        for t in range(tokens.shape[1]):
            h, c = self.cell(torch.cat([self.embed(previous), z], dim=1), (h, c))
            word_logp = torch.log_softmax(self.predict(h), dim=1).gather(1, tokens[:, t : t + 1]).squeeze(1)
            logp = logp + mask[:, t] * word_logp
            previous = tokens[:, t]
        return logp


def head() -> nn.Module:
    """z [B, D] -> logits [B, K]."""
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, K))


def mixture_prior(seed: int = 0) -> GaussianMixturePrior:
    """A 2-component mixture fitted to correlated random codes."""
    rng = np.random.default_rng(seed)
    codes = rng.standard_normal((200, D)) @ rng.normal(0, 0.5, (D, D)) + rng.normal(0, 1, D)
    return GaussianMixturePrior.fit(codes, labels=np.arange(200) % 2)


def tiny_spec(seed: int = 0) -> BundleSpec:
    """A BundleSpec with every graph role, a mixture prior, a Gaussian init and a clip range."""
    torch.manual_seed(seed)
    return BundleSpec(
        name="tiny",
        latent_dim=D,
        image_hw=IMAGE_HW,
        generator=Generator(),
        generator_convention=CONVENTION,
        description="tiny test bundle",
        license="MIT",
        prior=mixture_prior(seed),
        init=GaussianPrior(0.0, 0.8),
        clip=(-3.0, 3.0),
        classes=CLASSES,
        vocabulary=VOCABULARY,
        max_tokens=T,
        head=head(),
        captioner=Captioner(),
        encoder=Encoder(),
        image_classifier=ImageClassifier(),
        sampler={"steps": 12, "eps1": 0.05, "eps2": 1e-3},
        sampler_by_condition={"caption": {"steps": 20}},
        presets={
            "paper": {"eps1": 1e-3, "eps2": 1e-8, "prior_weight": 0.0, "clip": None},
            "wide": {"clip": (-5.0, 5.0)},
        },
        provenance={"recipe": "tests/export/tiny_networks.py"},
    )


def generator_only_spec(**changes) -> BundleSpec:
    """A bundle with just a generator (fast to write); `changes` override BundleSpec fields."""
    torch.manual_seed(0)
    fields = dict(
        name="tiny-generator", latent_dim=D, image_hw=IMAGE_HW, generator=Generator(), generator_convention=CONVENTION
    )
    return BundleSpec(**{**fields, **changes})
