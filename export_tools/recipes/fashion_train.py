"""Training of the fashion-colors networks in six resumable stages, on CPU.

1. autoencoder: encoder E and generator G on pixels, with an auxiliary linear class loss on the
   code and Gaussian noise on the code before G (so G decodes a neighbourhood of each code). G draws
   a shape times one tint picked from learned colours; the tint it picks for a (noisy) code learns
   the image's palette colour (cross-entropy), so each colour of the data has a tint of its own.
2. whitening: whiten E's codes (mean/Cholesky baked into E and G as buffers).
3. flow: a Real NVP flow f from u ~ N(0, I) to the whitened codes, by maximum likelihood; the
   bundle's latent is u (generator G(f(u)), encoder f^-1(E(x))), so its prior is exactly N(0, I).
4. teacher: a pixel-space CNN of class and colour, trained on the real training images (options
   tried, off by default: `hue_mix` re-tints a fraction of them with a blend of two palette colours,
   labelled with the blend's weights; `invariant_class` makes its class head read brightness only).
5. generator: G fine-tuned DeePSiM-style (pixel + feature loss in E's space + adversarial) on
   codes, plus, on flow samples f(u), adversarial, cycle (E(G(f(u))) = f(u)) and tint-entropy (G's
   own tint softmax of f(u): one colour per draw, so the flow's mass between colour clusters decodes
   to one palette colour, not an in-between hue) losses; options tried, off by default: colour purity
   (the teacher's colour entropy of G(f(u))), more adversarial weight on G(f(u)) alone, and matching
   the teacher's feature statistics of G(f(u)) to the data's.
6. head: the MLP head and the LRCN captioner, distilled from the teacher on a pool of codes
   u = sqrt(1 - a^2) f^-1(E(x)) + a eps (eps ~ N(0, I), a ~ U(0, 1) per code), each labelled by the
   teacher's class and colour probabilities for the decoded image G(f(u)). The pool spans the path
   of a chain from N(0, I) to the data, and its labels say what the generator draws at u, so the
   gradient that steers a chain points to codes that decode to the requested class. A linear probe
   (training only) distils the same probabilities onto the captioner's features, so that they carry
   the class and colour as clearly as the head's do. `ensemble` heads and captioners are trained
   side by side from their own initialisations and caption draws, and read as one (the mean of their
   log-probabilities): a chain driven by one network finds codes where that network is sure and the
   teacher is not, and such errors of networks trained apart rarely coincide. The pool is cached on
   disk beside the checkpoint, keyed by the networks that label it, so that extending the head stage
   reuses it. Each code's colour label is read at a nearby code (`colour_label_noise`): a smoothed colour.

Everything lives in one checkpoint file, rewritten (temp name, then rename) after every epoch;
the checkpoint stores a hash of the configuration and a resumed run refuses a different one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from export_tools import write_atomically
from export_tools.nets.fashion import (
    Captioner,
    CaptionerEnsemble,
    Discriminator,
    Encoder,
    Generator,
    Head,
    HeadEnsemble,
    Teacher,
)
from export_tools.nets.flow import RealNVP, flow_loss
from export_tools.recipes.errors import RecipeError
from export_tools.recipes.fashion_data import (
    CLASS_NAMES,
    COLOUR_NAMES,
    DATA_DIR,
    PALETTE_RGB,
    CaptionTable,
    load_split,
    vocabulary,
)

STAGES = ("autoencoder", "whitening", "flow", "teacher", "generator", "head")
RECIPE_VERSION = 5  # the networks, their starts and the stages a checkpoint holds; another version's is refused


@dataclass
class TrainConfig:
    latent_dim: int = 64  # D, size of the code z
    width: int = 32  # channels of the first conv layer of E, G and D
    head_hidden: int = 128  # width of the MLP head's hidden layers (256 measured no better, for 3x the weights)
    caption_features: int = 256  # width of the captioner's MLP of the code, which its LSTM reads at every word
    batch_size: int = 128  # images per optimisation step
    lr: float = 2e-3  # Adam learning rate of the autoencoder, teacher and head (the generator uses half)
    autoencoder_epochs: int = 5  # stage 1 passes over the training set
    flow_epochs: int = 24  # stage 3 passes (cheap: the flow on 64-d codes)
    teacher_epochs: int = 2  # stage 4 passes (a small CNN on real images)
    generator_epochs: int = 2  # stage 5 passes
    head_epochs: int = 3  # stage 6 passes over the distillation pool (10 measured no better)
    code_noise: float = 0.2  # std of the noise added to the unit-variance raw code before G in stage 1
    flow_couplings: int = 12  # affine couplings of the flow
    flow_hidden: int = 256  # width of each coupling's MLP
    flow_lr: float = 1e-3  # Adam learning rate of the flow (cosine-decayed over its epochs)
    flow_code_noise: float = 0.05  # std of the noise added to whitened codes when fitting the flow (smooths it)
    pool_copies: int = 3  # stage 6: codes in the distillation pool per training image (each with its own a, eps)
    # stage 6: the colour label of pool code u is the teacher's colour of G(f(u + this * eps)), eps ~ N(0, I): a
    # smoothed p(colour | u) whose gradient reaches across the sharp borders between the generator's tints
    colour_label_noise: float = 0.2
    caption_feature_weight: float = 1.0  # stage 6: weight of the probe's loss on the captioner's features
    ensemble: int = 4  # stage 6: heads and captioners trained apart; the bundle's graphs use their mean log-probability
    class_weight: float = 0.05  # weight of the auxiliary class loss on the code in stage 1
    tint_weight: float = 0.05  # stage 1: weight of the cross-entropy of G's tint (of the noisy code) to the colour
    feature_weight: float = 1.0  # stage 5: weight of the feature loss in E's space
    adversarial_weight: float = 0.01  # stage 5: weight of the generator's adversarial loss
    cycle_weight: float = 0.05  # stage 5: weight of |E(G(z)) - z|^2 on flow samples
    tint_entropy_weight: float = 0.1  # stage 5: weight of the entropy of G's tint softmax on flow samples
    sample_adversarial_weight: float = 0.0  # stage 5: extra weight of the adversarial loss on flow samples G(f(u))
    # stage 5: weight of matching the mean and covariance of the teacher's features of G(f(u)) to the real images'
    feature_match_weight: float = 0.0
    invariant_class: bool = False  # stage 4: the teacher's class head sees brightness only (tried: mixed, see docs)
    # stage 4: fraction of the teacher's images tinted with a blend of two palette colours (tried: 0.5)
    hue_mix: float = 0.0
    purity_weight: float = 0.0  # stage 5: weight of the teacher's colour entropy of G(f(u)) (one palette colour)
    train_limit: int | None = None  # use only the first N training images (tests, quick trials)
    seed: int = 0  # seed of initialisation, shuffling and noise

    def stage_epochs(self) -> dict[str, int]:
        """Passes over the training set per stage (the whitening is fitted in one pass)."""
        return {
            "autoencoder": self.autoencoder_epochs,
            "whitening": 1,
            "flow": self.flow_epochs,
            "teacher": self.teacher_epochs,
            "generator": self.generator_epochs,
            "head": self.head_epochs,
        }

    def identity(self) -> dict:
        """The fields that define what is trained; epoch counts only say how long, so a run may be extended."""
        return {key: value for key, value in asdict(self).items() if not key.endswith("_epochs")}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Networks:
    """Every network of the recipe and its optimiser state, as saved in the checkpoint."""

    encoder: Encoder
    generator: Generator
    head: HeadEnsemble  # `ensemble` heads
    captioner: CaptionerEnsemble  # `ensemble` captioners
    discriminator: Discriminator
    aux_classifier: torch.nn.Linear  # stage 1 only: makes the raw code class-informative
    flow: RealNVP  # u ~ N(0, I) -> whitened code
    teacher: Teacher  # stage 4: labels the decoded codes the head and captioner are distilled from
    caption_probe: torch.nn.ModuleList  # stage 6 only: per captioner, class and colour logits from its features

    @classmethod
    def build(cls, config: TrainConfig, vocab_size: int) -> Networks:
        for name in (
            "latent_dim",
            "width",
            "head_hidden",
            "caption_features",
            "flow_couplings",
            "flow_hidden",
            "ensemble",
        ):
            if getattr(config, name) < 1:
                raise RecipeError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(config, name)}")
        if not 0 <= config.hue_mix <= 1:
            raise RecipeError(f"--hue-mix is a fraction of the teacher's images, from 0 to 1, not {config.hue_mix}")
        if not 0 <= config.colour_label_noise < math.inf:
            raise RecipeError(
                f"--colour-label-noise is the std of a move of the code, a finite number >= 0, "
                f"not {config.colour_label_noise}"
            )

        def seeded(name: str, make):
            """make() with torch's generator seeded from (seed, name): no network's size changes another's start."""
            torch.manual_seed(int.from_bytes(hashlib.sha256(f"{config.seed}/{name}".encode()).digest()[:8], "little"))
            return make()

        head = functools.partial(Head, config.latent_dim, config.head_hidden, len(CLASS_NAMES))
        captioner = functools.partial(Captioner, config.latent_dim, vocab_size, config.caption_features)
        probe = functools.partial(torch.nn.Linear, config.caption_features, len(CLASS_NAMES) + len(COLOUR_NAMES))
        members = range(config.ensemble)
        return cls(
            encoder=seeded("encoder", lambda: Encoder(config.latent_dim, config.width)),
            generator=seeded("generator", lambda: Generator(config.latent_dim, config.width, len(COLOUR_NAMES))),
            head=HeadEnsemble([seeded(f"head{i}", head) for i in members]),
            captioner=CaptionerEnsemble([seeded(f"captioner{i}", captioner) for i in members]),
            discriminator=seeded("discriminator", lambda: Discriminator(config.width)),
            aux_classifier=seeded("aux_classifier", lambda: torch.nn.Linear(config.latent_dim, len(CLASS_NAMES))),
            flow=RealNVP(config.latent_dim, config.flow_couplings, config.flow_hidden, seed=config.seed),
            teacher=seeded(
                "teacher",
                lambda: Teacher(config.width, len(CLASS_NAMES), len(COLOUR_NAMES), config.invariant_class),
            ),
            caption_probe=torch.nn.ModuleList([seeded(f"caption_probe{i}", probe) for i in members]),
        )

    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            "encoder": self.encoder,
            "generator": self.generator,
            "head": self.head,
            "captioner": self.captioner,
            "discriminator": self.discriminator,
            "aux_classifier": self.aux_classifier,
            "caption_probe": self.caption_probe,
            "flow": self.flow,
            "teacher": self.teacher,
        }

    def load(self, state: dict) -> None:
        """Load the module states of a checkpoint read by `load_checkpoint`."""
        for name, module in self.modules().items():
            module.load_state_dict(state["modules"][name])


@dataclass
class Progress:
    """Where training stands: epochs done per stage and wall seconds spent per stage."""

    epochs_done: dict[str, int] = field(default_factory=lambda: {stage: 0 for stage in STAGES})
    seconds: dict[str, float] = field(default_factory=lambda: {stage: 0.0 for stage in STAGES})


class Trainer:
    """Runs the stages in order, skipping what the checkpoint in `out_dir` already holds."""

    def __init__(self, config: TrainConfig, out_dir: Path, data_dir: Path = DATA_DIR, log=print):
        self.config = config
        self.out_dir = Path(out_dir)
        self.data_dir = Path(data_dir)
        self.log = log
        self.vocab = vocabulary()
        self.nets = Networks.build(config, len(self.vocab))
        self.progress = Progress()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.pending_optimizer_states: dict[str, dict] = {}  # from the checkpoint, applied when a stage starts
        self.pool: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # see distillation_pool

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    # -- checkpoint -------------------------------------------------------------------------

    def resume(self) -> None:
        """Load the checkpoint in out_dir if there is one; refuse one made with another configuration."""
        if not self.checkpoint_path.exists():
            return
        state = load_checkpoint(self.checkpoint_path)
        if state["config_digest"] != self.config.digest():
            raise RecipeError(
                f"{self.checkpoint_path} was trained with another configuration "
                f"({describe_config_change(state['config'], self.config.identity())}); "
                "use the same options or a new --out directory"
            )
        self.nets.load(state)
        self.progress = Progress(**state["progress"])
        self.pending_optimizer_states = state["optimizers"]
        self.log(f"resumed from {self.checkpoint_path}: {self.progress.epochs_done}")

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "config": asdict(self.config),
            "config_digest": self.config.digest(),
            "recipe_version": RECIPE_VERSION,
            "modules": {name: module.state_dict() for name, module in self.nets.modules().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "progress": asdict(self.progress),
            "vocabulary": self.vocab,
        }
        write_atomically(self.checkpoint_path, lambda temp: torch.save(state, temp))

    def optimizer(self, name: str, params, lr: float, beta1: float = 0.5) -> torch.optim.Optimizer:
        """Adam for one stage, restored from the checkpoint when resuming mid-stage."""
        if name not in self.optimizers:
            opt = torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999))
            if name in self.pending_optimizer_states:
                opt.load_state_dict(self.pending_optimizer_states[name])
            self.optimizers[name] = opt
        return self.optimizers[name]

    # -- driver ---------------------------------------------------------------------------

    def run(self) -> Progress:
        self.resume()
        train = load_split("train", self.data_dir, self.config.train_limit)
        self.images = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, 32, 32]
        self.labels = torch.from_numpy(train.labels)
        self.colours = torch.from_numpy(train.colours)
        self.gray = torch.from_numpy(train.gray)  # uint8 [N, 32, 32]
        self.captions = CaptionTable(self.vocab)
        steps = {
            "autoencoder": self.autoencoder_epoch,
            "whitening": self.fit_whitening,
            "flow": self.flow_epoch,
            "teacher": self.teacher_epoch,
            "generator": self.generator_epoch,
            "head": self.head_epoch,
        }
        for stage in STAGES:
            while self.progress.epochs_done[stage] < self.config.stage_epochs()[stage]:
                epoch = self.progress.epochs_done[stage]
                started = time.time()
                torch.manual_seed(self.config.seed * 1000 + STAGES.index(stage) * 100 + epoch)
                metrics = steps[stage](epoch)
                self.progress.seconds[stage] += time.time() - started
                self.progress.epochs_done[stage] = epoch + 1
                self.save()
                summary = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                self.log(
                    f"[{stage}] epoch {epoch + 1}/{self.config.stage_epochs()[stage]} done in "
                    f"{time.time() - started:.0f}s: {summary}"
                )
        return self.progress

    def batches(self, count: int | None = None):
        """Shuffled index batches over `count` items (default: the training set; the seed is set per epoch by `run`)."""
        order = torch.randperm(len(self.labels) if count is None else count)
        size = self.config.batch_size
        return [order[i : i + size] for i in range(0, len(order) - size + 1, size)]

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index].float() / 255.0

    def report(self, stage: str, step: int, total: int, started: float, sums: dict[str, float]) -> None:
        if (step + 1) % 50 == 0 or step + 1 == total:
            means = " ".join(f"{k}={v / (step + 1):.4f}" for k, v in sums.items())
            self.log(f"[{stage}] {step + 1}/{total} batches, {time.time() - started:.0f}s: {means}")

    # -- stage 1 --------------------------------------------------------------------------

    def autoencoder_epoch(self, epoch: int) -> dict[str, float]:
        nets, cfg = self.nets, self.config
        params = [*nets.encoder.parameters(), *nets.generator.parameters(), *nets.aux_classifier.parameters()]
        opt = self.optimizer("autoencoder", params, cfg.lr)
        nets.encoder.train()
        sums = {"pixel": 0.0, "class": 0.0, "tint": 0.0}
        batches, started = self.batches(), time.time()
        for step, index in enumerate(batches):
            x = self.pixels(index)
            code = nets.encoder.raw_code(x)
            noisy = code + cfg.code_noise * torch.randn_like(code)
            recon = nets.generator.decode_raw(noisy)
            pixel = F.l1_loss(recon, x)
            klass = F.cross_entropy(nets.aux_classifier(code), self.labels[index])
            tint = F.cross_entropy(nets.generator.tint_logits(noisy), self.colours[index])
            loss = pixel + cfg.class_weight * klass + cfg.tint_weight * tint
            opt.zero_grad()
            loss.backward()
            opt.step()
            sums["pixel"] += pixel.item()
            sums["class"] += klass.item()
            sums["tint"] += tint.item()
            self.report("autoencoder", step, len(batches), started, sums)
        if recon.detach().amax() < 0.05 * x.amax():
            # G's shape is a sigmoid times the tint: while the tints are grey, two of three channels of a
            # saturated colour say "too bright" on the item itself, and in some runs (a 32-d code) the
            # shape's sigmoid dies at 0 for good; black pictures are a failed run, not a result
            raise RecipeError(
                f"the generator draws black after autoencoder epoch {epoch + 1} (its shape died while the tints "
                "were learnt); train again with another --seed into a new --out directory"
            )
        return {k: v / len(batches) for k, v in sums.items()}

    # -- stage 2 --------------------------------------------------------------------------

    @torch.no_grad()
    def over_training_set(self, network) -> torch.Tensor:
        """network(pixels) of every training image, run in chunks of 1000 and concatenated (no gradients)."""
        count = len(self.labels)
        return torch.cat([network(self.pixels(torch.arange(i, min(i + 1000, count)))) for i in range(0, count, 1000)])

    def encode_all(self) -> torch.Tensor:
        """Whitened codes of the whole training set, float32 [N, D] (E in eval mode)."""
        self.nets.encoder.eval()
        return self.over_training_set(self.nets.encoder)

    def fit_whitening(self, epoch: int) -> dict[str, float]:
        encoder, generator = self.nets.encoder, self.nets.generator
        encoder.eval()
        raw = self.over_training_set(encoder.raw_code)
        with torch.no_grad():
            encoder.whitening.set(raw)
            generator.whitening.load_state_dict(encoder.whitening.state_dict())
        return {"code_std": float(self.encode_all().std())}

    # -- stage 3 --------------------------------------------------------------------------

    def flow_epoch(self, epoch: int) -> dict[str, float]:
        nets, cfg = self.nets, self.config
        codes = self.encode_all()
        opt = self.optimizer("flow", nets.flow.parameters(), cfg.flow_lr)
        for group in opt.param_groups:  # cosine decay over the stage, a function of the epoch (resumable)
            group["lr"] = cfg.flow_lr * 0.5 * (1 + math.cos(math.pi * epoch / max(1, cfg.flow_epochs)))
        nets.flow.train()
        sums = {"nll": 0.0}
        batches, started = self.batches(), time.time()
        for step, index in enumerate(batches):
            z = codes[index] + cfg.flow_code_noise * torch.randn(len(index), cfg.latent_dim)
            loss = flow_loss(nets.flow, z)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(nets.flow.parameters(), 10.0)
            opt.step()
            sums["nll"] += loss.item()
            self.report("flow", step, len(batches), started, sums)
        nets.flow.eval()
        return {k: v / len(batches) for k, v in sums.items()}

    @torch.no_grad()
    def flow_codes(self) -> torch.Tensor:
        """u = f^-1(E(x)) of the whole training set, float32 [N, D]."""
        codes = self.encode_all()
        self.nets.flow.eval()
        return torch.cat([self.nets.flow.inverse(codes[i : i + 2000])[0] for i in range(0, len(codes), 2000)])

    @torch.no_grad()
    def flow_samples(self, count: int) -> torch.Tensor:
        """Codes f(u) for u ~ N(0, I), float32 [count, D]."""
        self.nets.flow.eval()
        return self.nets.flow(torch.randn(count, self.config.latent_dim))

    # -- stage 4 --------------------------------------------------------------------------

    def teacher_epoch(self, epoch: int) -> dict[str, float]:
        teacher = self.nets.teacher.train()
        # beta1 0.9, not the GAN stages' 0.5: with 0.5 one run's loss jumped from 4 to 71 and ended worse
        opt = self.optimizer("teacher", teacher.parameters(), self.config.lr, beta1=0.9)
        sums = {"class": 0.0, "colour": 0.0}
        batches, started = self.batches(), time.time()
        for step, index in enumerate(batches):
            pixels, colour_probs = blend_hues(
                self.pixels(index), self.gray[index], self.colours[index], self.config.hue_mix
            )
            class_logits, colour_logits = teacher(pixels)
            klass = F.cross_entropy(class_logits, self.labels[index])
            colour = soft_cross_entropy(colour_logits, colour_probs)
            opt.zero_grad()
            (klass + colour).backward()
            opt.step()
            sums["class"] += klass.item()
            sums["colour"] += colour.item()
            self.report("teacher", step, len(batches), started, sums)
        teacher.eval()
        return {k: v / len(batches) for k, v in sums.items()}

    # -- stage 5 --------------------------------------------------------------------------

    def generator_epoch(self, epoch: int) -> dict[str, float]:
        nets, cfg = self.nets, self.config
        encoder, generator, disc, teacher = nets.encoder, nets.generator, nets.discriminator, nets.teacher
        for frozen in (encoder, teacher):
            frozen.eval()
            frozen.requires_grad_(False)
        opt_g = self.optimizer("generator", generator.parameters(), cfg.lr / 2)
        opt_d = self.optimizer("discriminator", disc.parameters(), cfg.lr / 2)
        sums = {
            "pixel": 0.0,
            "feature": 0.0,
            "cycle": 0.0,
            "tint": 0.0,
            "purity": 0.0,
            "match": 0.0,
            "adv_g": 0.0,
            "adv_d": 0.0,
        }
        real_features = FeatureStatistics(self.over_training_set(teacher.net))
        batches, started = self.batches(), time.time()
        for step, index in enumerate(batches):
            x = self.pixels(index)
            with torch.no_grad():
                z = encoder(x)
                target_features = encoder.features(x)
            z_prior = self.flow_samples(len(index))
            recon = generator(z)
            sampled = generator(z_prior)
            # discriminator: real images against reconstructions and decoded flow samples
            fake = torch.cat([recon, sampled]).detach()
            adv_d = F.softplus(-disc(x)).mean() + F.softplus(disc(fake)).mean()
            opt_d.zero_grad()
            adv_d.backward()
            opt_d.step()
            # generator
            pixel = F.l1_loss(recon, x)
            feature = sum(F.mse_loss(a, b) for a, b in zip(encoder.features(recon), target_features))
            cycle = F.mse_loss(encoder(sampled), z_prior)
            tint_logp = generator.tint_logits(generator.whitening.unwhiten(z_prior)).log_softmax(1)
            tint = -(tint_logp.exp() * tint_logp).sum(1).mean()  # entropy: 0 where each draw has one tint
            realness = disc(torch.cat([recon, sampled]))
            adv_g = F.softplus(-realness).mean()
            adv_sampled = F.softplus(-realness[len(index) :]).mean()
            # the teacher's view of the flow samples, only logged where both weights are 0: no backward through it
            with torch.set_grad_enabled(cfg.purity_weight > 0 or cfg.feature_match_weight > 0):
                sampled_features = teacher.net(sampled)
                colour_logp = teacher.colour(sampled_features).log_softmax(1)
                purity = -(colour_logp.exp() * colour_logp).sum(1).mean()  # entropy: 0 for one palette colour
                match = real_features.mismatch(sampled_features)
            loss = (
                pixel
                + cfg.feature_weight * feature
                + cfg.cycle_weight * cycle
                + cfg.tint_entropy_weight * tint
                + cfg.purity_weight * purity
                + cfg.adversarial_weight * adv_g
                + cfg.sample_adversarial_weight * adv_sampled
                + cfg.feature_match_weight * match
            )
            opt_g.zero_grad()
            loss.backward()
            opt_g.step()
            for key, value in (
                ("pixel", pixel),
                ("feature", feature),
                ("cycle", cycle),
                ("tint", tint),
                ("purity", purity),
                ("match", match),
                ("adv_g", adv_g),
                ("adv_d", adv_d),
            ):
                sums[key] += value.item()
            self.report("generator", step, len(batches), started, sums)
        return {k: v / len(batches) for k, v in sums.items()}

    # -- stage 6 --------------------------------------------------------------------------

    @property
    def pool_path(self) -> Path:
        return self.out_dir / "distillation_pool.pt"

    def pool_key(self) -> str:
        """A digest of everything the pool is made from: the encoder, flow, generator and teacher weights,
        the copies per image, the seed and the training images used."""
        digest = hashlib.sha256()
        for name in ("encoder", "flow", "generator", "teacher"):
            for key, tensor in sorted(self.nets.modules()[name].state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().contiguous().numpy().tobytes())
        cfg = self.config
        digest.update(json.dumps([cfg.pool_copies, cfg.colour_label_noise, cfg.seed, len(self.labels)]).encode())
        return digest.hexdigest()[:16]

    def cached_pool(self, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The pool saved in `pool_path` if it was made under `key`; None when missing, damaged or of other networks."""
        if not self.pool_path.exists():
            return None
        try:
            cached = torch.load(self.pool_path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache is rebuilt
            return None
        if cached.get("key") != key:
            return None
        self.log(f"[head] distillation pool: {len(cached['u'])} codes read from {self.pool_path}")
        return cached["u"], cached["class_probs"], cached["colour_probs"]

    @torch.no_grad()
    def distillation_pool(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The head's training set, built once from its own seed and cached in `pool_path` under `pool_key`
        (a cache of other networks is rebuilt): u float32 [P, D], teacher class probabilities [P, 10] and
        colour probabilities [P, 8] of G(f(u)) (of G(f(u + colour_label_noise * eps)) where that is set)."""
        if self.pool is not None:
            return self.pool
        key = self.pool_key()
        self.pool = self.cached_pool(key)
        if self.pool is None:
            cfg, nets, started = self.config, self.nets, time.time()
            nets.generator.eval()
            nets.teacher.eval()
            data = self.flow_codes().repeat(cfg.pool_copies, 1)
            generator = torch.Generator().manual_seed(cfg.seed * 1000 + 999)
            a = torch.rand(len(data), 1, generator=generator)
            u = (1 - a**2).sqrt() * data + a * torch.randn(data.shape, generator=generator)
            if cfg.colour_label_noise:
                shifted = u + cfg.colour_label_noise * torch.randn(u.shape, generator=generator)
            classes, colours = [], []
            for i in range(0, len(u), 1000):
                class_logits, colour_logits = nets.teacher(nets.generator(nets.flow(u[i : i + 1000])))
                if cfg.colour_label_noise:
                    _, colour_logits = nets.teacher(nets.generator(nets.flow(shifted[i : i + 1000])))
                classes.append(class_logits.softmax(1))
                colours.append(colour_logits.softmax(1))
            self.pool = (u, torch.cat(classes), torch.cat(colours))
            self.log(f"[head] distillation pool: {len(u)} codes decoded and labelled in {time.time() - started:.0f}s")
            state = {"key": key, "u": self.pool[0], "class_probs": self.pool[1], "colour_probs": self.pool[2]}
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(self.pool_path, lambda temp: torch.save(state, temp))
        return self.pool

    def head_epoch(self, epoch: int) -> dict[str, float]:
        nets, cfg = self.nets, self.config
        u_pool, class_pool, colour_pool = self.distillation_pool()
        params = [*nets.head.parameters(), *nets.captioner.parameters(), *nets.caption_probe.parameters()]
        opt = self.optimizer("head", params, cfg.lr)
        rng = np.random.default_rng([cfg.seed, 6, epoch])
        sums = {"class": 0.0, "caption": 0.0, "probe": 0.0, "agreement": 0.0}
        batches, started = self.batches(len(u_pool)), time.time()
        for step, index in enumerate(batches):
            u, class_probs, colour_probs = u_pool[index], class_pool[index], colour_pool[index]
            klass = caption = probe = 0.0
            for head, captioner, caption_probe in zip(nets.head, nets.captioner, nets.caption_probe):
                # captions of a class and a colour drawn from the teacher's probabilities (for each
                # captioner its own draw), so that the captioner learns p(caption | u) as the teacher
                # sees G(f(u))
                labels = torch.multinomial(class_probs, 1).squeeze(1).numpy()
                colours = torch.multinomial(colour_probs, 1).squeeze(1).numpy()
                tokens, mask = (torch.from_numpy(a) for a in self.captions.sample(labels, colours, rng))
                klass = klass + soft_cross_entropy(head(u), class_probs)
                caption = caption - captioner(u, tokens, mask).mean()
                probe_class, probe_colour = caption_probe(captioner.features(u)).split(
                    [len(CLASS_NAMES), len(COLOUR_NAMES)], 1
                )
                probe = probe + soft_cross_entropy(probe_class, class_probs)
                probe = probe + soft_cross_entropy(probe_colour, colour_probs)
            opt.zero_grad()
            (klass + caption + cfg.caption_feature_weight * probe).backward()
            opt.step()
            members = len(nets.head)
            sums["class"] += klass.item() / members
            sums["caption"] += caption.item() / members
            sums["probe"] += probe.item() / members
            with torch.no_grad():
                sums["agreement"] += (nets.head(u).argmax(1) == class_probs.argmax(1)).float().mean().item()
            self.report("head", step, len(batches), started, sums)
        return {k: v / len(batches) for k, v in sums.items()}


class FeatureStatistics:
    """Mean and correlation of a reference feature set [N, F], and how far a batch's moments are from them."""

    def __init__(self, features: torch.Tensor):
        self.mean = features.mean(0)
        self.std = features.std(0) + 1e-6
        self.correlation = torch.corrcoef(features.T)

    def mismatch(self, features: torch.Tensor) -> torch.Tensor:
        """Mean squared gap of the standardised mean and covariance of features [B, F] to the reference's (scalar)."""
        standard = (features - self.mean) / self.std
        centred = standard - standard.mean(0)
        covariance = centred.T @ centred / (len(features) - 1)
        return standard.mean(0).pow(2).mean() + (covariance - self.correlation).pow(2).mean()


def blend_hues(
    pixels: torch.Tensor, gray: torch.Tensor, colours: torch.Tensor, fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-tint about `fraction` of a batch with `w * own + (1 - w) * other` palette colour, `w ~ U(0, 1)`,
    labelled with the blend's weights, so that the teacher calls an in-between hue uncertain instead of
    naming one colour at random: the generator draws such hues between its colour clusters, and a chain
    that follows the teacher's (distilled) colour must be led to a palette hue, not to any hue the
    teacher happens to call by the requested name.

    pixels float32 [B, 3, 32, 32] in [0, 1] (the batch as tinted), gray uint8 [B, 32, 32], colours int64 [B]
    -> pixels float32 [B, 3, 32, 32], colour probabilities float32 [B, 8] (one-hot where not blended).
    """
    own = F.one_hot(colours, len(COLOUR_NAMES)).float()
    if fraction == 0:  # the default: no random draws, no tinting
        return pixels, own
    count, palette = len(colours), torch.from_numpy(PALETTE_RGB) / 255.0
    other = F.one_hot((colours + torch.randint(1, len(COLOUR_NAMES), (count,))) % len(COLOUR_NAMES), len(COLOUR_NAMES))
    blended = torch.rand(count) < fraction
    weight = torch.where(blended, torch.rand(count), torch.ones(count))[:, None]
    probs = weight * own + (1 - weight) * other.float()
    tinted = gray.float()[:, None] / 255.0 * (probs @ palette)[:, :, None, None]
    return torch.where(blended[:, None, None, None], tinted, pixels), probs


def soft_cross_entropy(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k probs[b, k] log softmax(logits)[b, k]; logits, probs [B, K]."""
    return -(probs * logits.log_softmax(1)).sum(1).mean()


def load_checkpoint(path: Path) -> dict:
    """Read a recipe checkpoint; a file that is not one gives a RecipeError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise RecipeError(f"cannot read checkpoint {path} ({error}); delete it or pick another --out") from None
    if not isinstance(state, dict) or "config_digest" not in state:
        raise RecipeError(f"{path} is not a fashion recipe checkpoint; delete it or pick another --out")
    if state.get("recipe_version", 1) != RECIPE_VERSION:
        raise RecipeError(
            f"{path} was made by version {state.get('recipe_version', 1)} of the recipe, this is version "
            f"{RECIPE_VERSION}; train again into a new --out directory"
        )
    return state


def describe_config_change(old: dict, new: dict) -> str:
    changed = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(new) if old.get(key) != new.get(key)]
    return ", ".join(changed) or "same values, different digest"


def trained_networks(out_dir: Path) -> tuple[TrainConfig, Networks, list[str]]:
    """The finished networks (eval mode) and vocabulary from a completed training run."""
    path = Path(out_dir) / "checkpoint.pt"
    if not path.exists():
        raise RecipeError(
            f"no checkpoint in {out_dir}; train first: python -m export_tools.recipes.fashion train --out {out_dir}"
        )
    state = load_checkpoint(path)
    config = TrainConfig(**state["config"])
    done = state["progress"]["epochs_done"]
    if any(done[stage] < epochs for stage, epochs in config.stage_epochs().items()):
        raise RecipeError(
            f"training in {out_dir} is not finished ({done}); "
            f"resume it: python -m export_tools.recipes.fashion train --out {out_dir}"
        )
    nets = Networks.build(config, len(state["vocabulary"]))
    nets.load(state)
    for module in nets.modules().values():
        module.eval()
    return config, nets, state["vocabulary"]
