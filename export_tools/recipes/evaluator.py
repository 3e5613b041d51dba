"""An independent judge of coloured Fashion-MNIST images, and the sample-quality figures it gives.

The evaluator is its own CNN (3x3 convs, batch norm, max pooling; unlike the bundle's strided encoder),
trained with its own seed on the coloured training images, with two heads: class and colour.
Its penultimate layer is the feature space of the diversity and Frechet-distance figures.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from export_tools import write_atomically
from export_tools.recipes.errors import RecipeError
from export_tools.recipes.fashion_data import CLASS_NAMES, COLOUR_NAMES, DATA_DIR, load_split


@dataclass
class EvaluatorConfig:
    epochs: int = 5  # passes over the training set
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # Adam learning rate
    shift: int = 2  # random translation of up to this many pixels (augmentation)
    train_limit: int | None = None  # use only the first N training images (tests)
    seed: int = 20261126  # independent of the bundle recipe's seed


class EvaluatorNet(nn.Module):
    """x [B, 3, 32, 32] in [0, 1] -> (class logits [B, 10], colour logits [B, 8], features [B, 128])."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)
                )
                for c_in, c_out in ((3, 32), (32, 64), (64, 128))
            ]
        )
        self.dropout = nn.Dropout(0.3)
        self.features = nn.Linear(128 * 4 * 4, 128)
        self.klass = nn.Linear(128, len(CLASS_NAMES))
        self.colour = nn.Linear(128, len(COLOUR_NAMES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = x
        for block in self.blocks:
            h = block(h)
        features = F.relu(self.features(h.flatten(1)))
        return self.klass(self.dropout(features)), self.colour(features), features


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 32, 32, 3] RGB -> float32 [N, 3, 32, 32] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate the whole batch by one random offset of up to `shift` pixels, filling with black."""
    dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=generator))
    padded = F.pad(x, (shift, shift, shift, shift))
    return padded[:, :, shift + dy : shift + dy + x.shape[2], shift + dx : shift + dx + x.shape[3]]


def train_evaluator(out_path: Path, config: EvaluatorConfig, data_dir: Path = DATA_DIR, log=print) -> dict:
    """Train the evaluator, save it to out_path (temp name, then rename); returns its test accuracies."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train = load_split("train", data_dir, config.train_limit)
    x_all = to_tensor(train.images)
    labels, colours = torch.from_numpy(train.labels), torch.from_numpy(train.colours)
    net = EvaluatorNet().train()
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    steps_per_epoch = len(labels) // config.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.epochs * steps_per_epoch)
    started = time.time()
    for epoch in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            class_logits, colour_logits, _ = net(random_shift(x_all[index], config.shift, generator))
            loss = F.cross_entropy(class_logits, labels[index]) + F.cross_entropy(colour_logits, colours[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            if (step + 1) % 100 == 0:
                log(
                    f"[evaluator] epoch {epoch + 1}/{config.epochs} step {step + 1}/{steps_per_epoch} "
                    f"loss={loss.item():.4f} {time.time() - started:.0f}s"
                )
    net.eval()
    test = load_split("test", data_dir)
    judged = Judge(net).judge(test.images)
    accuracy = {
        "class": float(np.mean(judged.classes == test.labels)),
        "colour": float(np.mean(judged.colours == test.colours)),
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(
        out_path,
        lambda temp: torch.save(
            {
                "kind": "fashion-evaluator",
                "config": asdict(config),
                "state": net.state_dict(),
                "test_accuracy": accuracy,
            },
            temp,
        ),
    )
    return accuracy


@dataclass
class Judgement:
    """What the evaluator sees in N images: classes int [N], colours int [N], features float64 [N, 128]."""

    classes: np.ndarray
    colours: np.ndarray
    features: np.ndarray


class Judge:
    """A trained EvaluatorNet applied to uint8 image arrays."""

    def __init__(self, net: EvaluatorNet):
        self.net = net.eval()

    @classmethod
    def load(cls, path: Path) -> Judge:
        path = Path(path)
        if not path.exists():
            raise RecipeError(
                f"no evaluator at {path}; train one: python -m export_tools.recipes.fashion "
                f"train-evaluator --out {path}"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # torch raises many types for a damaged file
            raise RecipeError(f"cannot read evaluator {path} ({error}); train it again with train-evaluator") from None
        if not isinstance(state, dict) or state.get("kind") != "fashion-evaluator":
            raise RecipeError(f"{path} is not a fashion evaluator checkpoint; train one with train-evaluator")
        net = EvaluatorNet()
        try:
            net.load_state_dict(state["state"])
        except RuntimeError:
            raise RecipeError(f"{path} holds another evaluator architecture; retrain it with train-evaluator") from None
        return cls(net)

    @torch.no_grad()
    def judge(self, images: np.ndarray) -> Judgement:
        """images uint8 [N, 32, 32, 3] RGB -> Judgement."""
        parts = [self.net(to_tensor(images[i : i + 500])) for i in range(0, len(images), 500)]
        return Judgement(
            torch.cat([p[0] for p in parts]).argmax(1).numpy(),
            torch.cat([p[1] for p in parts]).argmax(1).numpy(),
            torch.cat([p[2] for p in parts]).double().numpy(),
        )


def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of rows of features [N, F] (N >= 2)."""
    squared = (features**2).sum(1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * features @ features.T, 0))
    count = len(features)
    return float(distances.sum() / (count * (count - 1)))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a [N, F] and b [M, F]."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a.T), np.cov(b.T)
    # trace sqrt(cov_a cov_b) from the eigenvalues of sqrt(cov_a) cov_b sqrt(cov_a), which are >= 0
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.maximum(values, 0))) @ vectors.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(
        ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.maximum(cross, 0)).sum()
    )


@dataclass
class Scores:
    """Figures for one set of samples; caption figures are None where the set has no requested colours."""

    count: int  # number of images scored
    class_agreement: float  # fraction whose evaluator class is the requested class
    colour_agreement: float | None  # fraction whose evaluator colour is the requested colour
    diversity_ratio: float  # mean over classes of within-class feature spread / real images' (nan: no class has 2)
    frechet: float  # Frechet distance to the reference real test images in evaluator feature space
    per_class: dict[str, float]  # class name -> class agreement of the images made for that class


def score(
    judge: Judge,
    images: np.ndarray,
    classes: np.ndarray,
    colours: np.ndarray | None,
    reference: Judgement,
    reference_classes: np.ndarray,
) -> Scores:
    """Score images uint8 [N, 32, 32, 3] made for classes int [N] (and colours int [N]) against real images."""
    seen = judge.judge(images)
    ratios = []
    for label in np.unique(classes):
        generated = seen.features[classes == label]
        real = reference.features[reference_classes == label][: len(generated)]
        if len(real) >= 2 and len(generated) >= 2:
            ratios.append(mean_pairwise_distance(generated) / mean_pairwise_distance(real))
    return Scores(
        count=len(images),
        class_agreement=float(np.mean(seen.classes == classes)),
        colour_agreement=None if colours is None else float(np.mean(seen.colours == colours)),
        diversity_ratio=float(np.mean(ratios)) if ratios else float("nan"),
        frechet=frechet_distance(seen.features, reference.features),
        per_class={
            CLASS_NAMES[label]: float(np.mean(seen.classes[classes == label] == label)) for label in np.unique(classes)
        },
    )


@dataclass
class EvaluationPlan:
    per_class: int = 100  # samples per class for the class rows (and real test images per class)
    per_caption: int = 13  # samples per "a <colour> <class>" caption (80 captions)
    composite_per_class: int = 10  # samples per class on the composite path (slow: G and E every step)
    seed: int = 0  # generation seed (sample i of a request uses rng [seed, i])
    batch_size: int = 100  # chains run together
    crossing_per_class: int = 20  # crossing row: finished samples of each class A restarted towards other classes
    rows: tuple[str, ...] = ("real", "latent", "captions", "composite", "crossing")  # which rows to measure


def make_samples(
    pipe, requests: list[dict], count: int | None, path: str, seed: int, batch_size: int, sampler: dict
) -> np.ndarray:
    """Images uint8 [N, H, W, 3] for each request (`Pipeline.generate` keywords; `count` each unless the
    request sets n), in order. Every request gets start indices of its own (sample i uses rng [seed, i]):
    with shared indices the i-th sample of every class or caption would start from the same code, and one
    unlucky start would count against all of them."""
    images, first = [], 0
    for request in requests:
        size = {"n": count} if count is not None else {}
        pixels = pipe.generate(
            seed=seed, batch_size=batch_size, path=path, start_index=first, **size, **request, **sampler
        ).pixels
        images.append(pixels)
        first += len(pixels)
    return np.concatenate(images)


def evaluate_bundle(
    pipe, judge: Judge, plan: EvaluationPlan, sampler: dict, data_dir: Path = DATA_DIR, log=print
) -> dict[str, dict]:
    """Score samples made by the runtime (`pipe`, a latent_onnx.Pipeline) against real test images.

    Returns row name -> Scores fields plus "seconds" (generation wall time); `sampler` holds
    overrides of the bundle's sampler defaults (SamplerConfig field -> value, e.g. start="init").
    """
    test = load_split("test", data_dir)
    real_index = np.concatenate(
        [np.flatnonzero(test.labels == label)[: plan.per_class] for label in range(len(CLASS_NAMES))]
    )
    held_out = np.setdiff1d(np.arange(len(test.labels)), real_index)
    reference = judge.judge(test.images[held_out])
    reference_classes = test.labels[held_out]
    rows: dict[str, dict] = {}

    def record(name: str, images, classes, colours, seconds: float) -> None:
        scores = score(judge, images, classes, colours, reference, reference_classes)
        rows[name] = {**asdict(scores), "seconds": seconds}
        log(f"{name}: {format_row(rows[name])}")

    def generate(requests: list[dict], count: int | None, path: str) -> tuple[np.ndarray, float]:
        started = time.time()
        images = make_samples(pipe, requests, count, path, plan.seed, plan.batch_size, sampler)
        return images, time.time() - started

    class_requests = [{"classes": name} for name in CLASS_NAMES]
    classes_row = None
    if "real" in plan.rows:
        record("real", test.images[real_index], test.labels[real_index], test.colours[real_index], 0.0)
    if "latent" in plan.rows or "crossing" in plan.rows:
        images, seconds = generate(class_requests, plan.per_class, "latent")
        classes_row = images
    if "latent" in plan.rows:
        record("latent", images, np.repeat(np.arange(len(CLASS_NAMES)), plan.per_class), None, seconds)
    if "crossing" in plan.rows:
        # chains restarted at the encoder's code of finished class-A samples, conditioned on B != A
        # (what `--init-image <a class-A image> --class B` does); judged as B or not
        count, classes = plan.crossing_per_class, len(CLASS_NAMES)
        starts = {b: [] for b in range(classes)}
        for a in range(classes):
            pixels = classes_row[a * plan.per_class : a * plan.per_class + count]
            for i, code in enumerate(pipe.encode(pixels)):
                starts[(a + 1 + i % (classes - 1)) % classes].append(code)
        requests = [
            {"classes": CLASS_NAMES[b], "n": len(starts[b]), "init_z": np.stack(starts[b])} for b in range(classes)
        ]
        images, seconds = generate(requests, None, "latent")
        targets = np.concatenate([np.full(len(starts[b]), b) for b in range(classes)])
        record("crossing", images, targets, None, seconds)
    if "captions" in plan.rows:
        pairs = [(label, colour) for label in range(len(CLASS_NAMES)) for colour in range(len(COLOUR_NAMES))]
        requests = [{"caption": f"a {COLOUR_NAMES[colour]} {CLASS_NAMES[label]}"} for label, colour in pairs]
        images, seconds = generate(requests, plan.per_caption, "latent")
        labels, colours = (np.repeat(np.array(column), plan.per_caption) for column in zip(*pairs))
        record("captions", images, labels, colours, seconds)
    if "composite" in plan.rows:
        images, seconds = generate(class_requests, plan.composite_per_class, "composite")
        record("composite", images, np.repeat(np.arange(len(CLASS_NAMES)), plan.composite_per_class), None, seconds)
    return rows


def format_row(row: dict) -> str:
    colour = "-" if row["colour_agreement"] is None else f"{row['colour_agreement']:.3f}"
    return (
        f"n={row['count']} class={row['class_agreement']:.3f} colour={colour} "
        f"diversity={row['diversity_ratio']:.3f} frechet={row['frechet']:.2f} seconds={row['seconds']:.1f}"
    )
