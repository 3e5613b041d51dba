"""Networks of the coloured Fashion-MNIST bundle (32x32 RGB images, latent code z [B, D]).

Image tensors are `x [B, 3, 32, 32] float32` in [0, 1] (PixelConvention scale=255): pixel = x * 255.
The bundle's z is the encoder's code whitened with the statistics of the training set; the
`Whitening` buffers hold that affine map so every network here works in the whitened space.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Whitening(nn.Module):
    """Affine map between raw codes c and whitened codes z = L^-1 (c - mean); identity until `set`."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("chol", torch.eye(dim))  # L, lower Cholesky factor of cov(c)
        self.register_buffer("chol_inv", torch.eye(dim))  # L^-1

    def set(self, codes: torch.Tensor, ridge: float = 1e-5) -> None:
        """Fit to raw codes [N, D] float32 so that whiten(codes) has zero mean and identity covariance
        (up to `ridge` times the mean variance, added to the diagonal for a safe Cholesky)."""
        codes = codes.double()
        mean = codes.mean(0)
        cov = torch.cov(codes.T)
        cov = cov + ridge * cov.diagonal().mean() * torch.eye(codes.shape[1], dtype=torch.float64)
        chol = torch.linalg.cholesky(cov)
        self.mean.copy_(mean.float())
        self.chol.copy_(chol.float())
        self.chol_inv.copy_(torch.linalg.inv(chol).float())

    def whiten(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes - self.mean) @ self.chol_inv.T

    def unwhiten(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.chol.T + self.mean


class Encoder(nn.Module):
    """E: x [B, 3, 32, 32] in [0, 1] -> z [B, D] (whitened code)."""

    def __init__(self, latent_dim: int = 64, width: int = 32):
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(3, width, 4, 2, 1),  # 16x16
                nn.Conv2d(width, 2 * width, 4, 2, 1),  # 8x8
                nn.Conv2d(2 * width, 4 * width, 4, 2, 1),  # 4x4
            ]
        )
        self.to_code = nn.Linear(4 * width * 16, latent_dim)
        self.norm = nn.BatchNorm1d(latent_dim, affine=False)  # unit-variance raw code, so noise has a known scale
        self.whitening = Whitening(latent_dim)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations of each conv layer (the feature space of the generator's feature loss)."""
        feats = []
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            feats.append(h)
        return feats

    def raw_code(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.to_code(self.features(x)[-1].flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.whitening.whiten(self.raw_code(x))


class Generator(nn.Module):
    """G: z [B, D] (whitened code) -> x [B, 3, 32, 32] in [0, 1], drawn the way the data is made: a
    one-channel shape [B, 1, 32, 32] in [0, 1] times one tint [B, 3], the softmax mixture over `tints`
    learned colours that the code picks (`tint_logits`). Where the code picks one colour the picture is
    that colour alone, so a code between two colour clusters cannot decode to a smear of hues across the
    item, only to the one tint its softmax names (stage 5 keeps that softmax sharp on the flow's draws)."""

    def __init__(self, latent_dim: int = 64, width: int = 32, tints: int = 8):
        super().__init__()
        self.width = width
        self.whitening = Whitening(latent_dim)
        self.from_code = nn.Linear(latent_dim, 4 * width * 16)
        self.deconvs = nn.ModuleList(
            [
                nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1),  # 8x8
                nn.ConvTranspose2d(2 * width, width, 4, 2, 1),  # 16x16
                nn.ConvTranspose2d(width, width, 4, 2, 1),  # 32x32
            ]
        )
        self.to_shape = nn.Conv2d(width, 1, 3, 1, 1)
        self.to_tint = nn.Sequential(nn.Linear(latent_dim, 4 * width), nn.LeakyReLU(0.2), nn.Linear(4 * width, tints))
        self.palette = nn.Parameter(torch.zeros(tints, 3))  # the tints' RGB in [0, 1], as logits of a sigmoid

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_raw(self.whitening.unwhiten(z))

    def tint_logits(self, codes: torch.Tensor) -> torch.Tensor:
        """Raw codes [B, D] -> logits [B, tints] of the tint each code picks."""
        return self.to_tint(codes)

    def decode_raw(self, codes: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.from_code(codes), 0.2).view(-1, 4 * self.width, 4, 4)
        for deconv in self.deconvs:
            h = F.leaky_relu(deconv(h), 0.2)
        tint = self.tint_logits(codes).softmax(1) @ torch.sigmoid(self.palette)
        return torch.sigmoid(self.to_shape(h)) * tint[:, :, None, None]


class Head(nn.Module):
    """The MLP C: z [B, D] -> class logits [B, K]; `hidden` [B, H] also feeds the captioner."""

    def __init__(self, latent_dim: int = 64, hidden: int = 256, classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(latent_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, classes)

    def hidden(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(z))))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(z))


class LSTMCell(nn.Module):
    """One LSTM step written out (nn.LSTM does not survive the gradient export): x [B, I], (h, c) [B, H]."""

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.gates = nn.Linear(inputs + hidden, 4 * hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = self.gates(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class Captioner(nn.Module):
    """Factored two-layer LRCN: lstm1 reads words, lstm2 reads lstm1 and the code's features.

    The features are the captioner's own two-layer MLP of z (not the class head's), so the head and
    the captioner are trained apart. forward(z [B, D], tokens [B, T] int64, mask [B, T] float32) ->
    logp [B]: the masked sum of log p(tokens[t] | tokens[<t], z), with `<eos>` (id 0) fed as the
    first input (teacher forcing).
    """

    def __init__(self, latent_dim: int, vocab_size: int, features: int = 256, embed: int = 64, hidden: int = 128):
        super().__init__()
        self.hidden_size = hidden
        self.features = nn.Sequential(
            nn.Linear(latent_dim, features), nn.ReLU(), nn.Linear(features, features), nn.ReLU()
        )
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm1 = LSTMCell(embed, hidden)
        self.lstm2 = LSTMCell(hidden + features, hidden)
        self.predict = nn.Linear(hidden, vocab_size)

    def token_logp(self, z: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """log p(tokens[b, t] | tokens[b, <t], z) as [B, T] float32."""
        batch, length = tokens.shape
        static = self.features(z)
        inputs = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], 1)
        words = self.embed(inputs)
        h1 = c1 = h2 = c2 = z.new_zeros(batch, self.hidden_size)
        logits = []
        for t in range(length):
            h1, c1 = self.lstm1(words[:, t], h1, c1)
            h2, c2 = self.lstm2(torch.cat([h1, static], 1), h2, c2)
            logits.append(self.predict(h2))
        logp = torch.log_softmax(torch.stack(logits, 1), -1)
        return logp.gather(2, tokens.unsqueeze(2)).squeeze(2)

    def forward(self, z: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.token_logp(z, tokens) * mask).sum(1)


class HeadEnsemble(nn.ModuleList):
    """Heads trained apart, read as one: z [B, D] -> the mean of their log-softmax [B, K].

    Those are the logits of the members' normalised geometric mean: a chain that follows them has to
    satisfy every member, so it cannot settle where one member alone is wrong and sure.
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(z).log_softmax(1) for member in self]).mean(0)


class CaptionerEnsemble(nn.ModuleList):
    """Captioners trained apart, read as one: (z [B, D], tokens [B, T], mask [B, T]) -> mean logp [B]."""

    def forward(self, z: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(z, tokens, mask) for member in self]).mean(0)


def brightness(x: torch.Tensor) -> torch.Tensor:
    """x [B, 3, H, W] in [0, 1] -> [B, 3, H, W]: each pixel's largest channel, scaled so that the image's
    brightest pixel is 1 (at most 20x), in all three channels. An item tinted with any palette colour
    (`gray * colour`) gives the same picture, so what is read from it cannot depend on the colour."""
    level = x.amax(1, keepdim=True)
    level = level / level.amax((2, 3), keepdim=True).clamp_min(0.05)
    return level.expand(-1, 3, -1, -1)


class Teacher(nn.Module):
    """The recipe's pixel-space judge: x [B, 3, 32, 32] in [0, 1] -> (class logits [B, 10], colour logits [B, 8]).

    Trained on real images; it labels decoded codes G(f(u)), so that the head and the captioner learn
    what the generator actually draws at u rather than which training image u came from. With
    `invariant_class` its class logits come from `brightness(x)` (the colour logits from x, through the
    same layers), so that the class it names, and the heads learnt from it, do not depend on the
    colour: a chain whose class pull is 20x its log-probability turns a small colour preference of
    the class head into a large one among the samples.
    """

    def __init__(self, width: int = 32, classes: int = 10, colours: int = 8, invariant_class: bool = False):
        super().__init__()
        self.invariant_class = invariant_class
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),  # 16x16
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1),  # 8x8
            nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, 4 * width, 4, 2, 1),  # 4x4
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(4 * width * 16, 256),
            nn.LeakyReLU(0.2),
        )
        self.klass = nn.Linear(256, classes)
        self.colour = nn.Linear(256, colours)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)
        shape = self.net(brightness(x)) if self.invariant_class else h
        return self.klass(shape), self.colour(h)


class Discriminator(nn.Module):
    """D: x [B, 3, 32, 32] in [0, 1] -> realness logit [B]."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(4 * width * 16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class ImageClassifier(nn.Module):
    """The composite path's classifier: x [B, 3, 32, 32] -> logits [B, K], i.e. head(E(x))."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
