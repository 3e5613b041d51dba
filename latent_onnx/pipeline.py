"""The pipeline: a bundle's graphs plus the SGLD loop, batching and decoding.

Built once (`Pipeline.from_bundle`) and called many times; `generate` keeps all its state local,
so one pipeline may serve several threads at once.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .bundle import Bundle, load_bundle
from .conditioning import ClassIndex, GradientTarget, caption_tokens
from .contracts import CONDITIONS
from .errors import BundleError, InputError, SamplingError
from .images import to_pixels
from .priors import GaussianMixturePrior
from .sampler import SAMPLER_FIELDS, ChainState, SamplerConfig, SGLDSampler, check_int
from .sessions import GraphRunner, SessionFactory

PATH_ROLES = {"latent": "class_grad", "composite": "composite_class_grad"}  # class path -> its gradient graph
PATHS = tuple(PATH_ROLES)
MAX_SAMPLES = 100_000
MAX_BATCH = 4096
NOISE_CHUNK = 16  # steps of noise drawn at once per chain (fewer NumPy calls; the same numbers)

StepCallback = Callable[[int, int, np.ndarray], None]  # (step done 1..total, total, z [b, D] of the batch)


def condition_kind(caption: str | None) -> str:
    """The kind of condition of a request: "caption" when it names a caption, else "class" (the bundle's
    sampler settings may differ by it)."""
    return "caption" if caption is not None else "class"


@dataclass(frozen=True)
class GenerateOptions:
    """What to generate. Sampler settings not in `sampler` take the bundle's (or the preset's) defaults."""

    classes: str | None = None  # class spec: "sneaker", "11", "sneaker:0.7,sandal:0.3", negative weights push away
    caption: str | None = None  # a caption in the bundle's vocabulary (instead of classes)
    n: int = 1  # number of samples
    seed: int | None = None  # >= 0; None draws one (returned in the result's options)
    start_index: int = 0  # sample indices run start_index .. start_index + n - 1; sample i uses rng [seed, i]
    batch_size: int = 16  # chains run together; results do not depend on it
    preset: str | None = None  # a named set of sampler settings from the bundle (e.g. "paper")
    sampler: Mapping[str, Any] = field(default_factory=dict)  # SamplerConfig field -> value (None = the default)
    then: str | None = None  # the condition from step `switch_at` on: a class spec (class runs) or a caption
    switch_at: int | None = None  # the step at which `then` takes over, 1 .. steps - 1 (default: steps // 2)
    init_image: Image.Image | None = None  # start every chain at encoder(init_image) instead of the prior
    path: str = "latent"  # "latent": the MLP gradient graph; "composite": the gradient through G then the classifier
    callback: StepCallback | None = None  # called after every step
    init_z: np.ndarray | None = None  # float32 [n, D] injected starting codes (tests, round trips)
    noise: np.ndarray | None = None  # float32 [steps, n, D] injected standard-normal noise (scaled by sqrt(eps2))

    def updated(self, **values) -> GenerateOptions:
        """A copy with fields replaced; keys naming a SamplerConfig field (steps, eps1, method, ...) go into
        `sampler` (None leaves the setting as it was); unknown keys are an InputError."""
        own = {f.name for f in fields(self)}
        unknown = sorted(set(values) - own - set(SAMPLER_FIELDS))
        if unknown:
            raise InputError(f"unknown option '{unknown[0]}'")
        sampler = dict(values.pop("sampler", None) or self.sampler)
        for key in [key for key in values if key not in own]:
            value = values.pop(key)
            if value is not None:
                sampler[key] = value
        return replace(self, sampler=sampler, **values)

    @property
    def condition(self) -> str:
        """The kind of condition asked for (see condition_kind)."""
        return condition_kind(self.caption)

    def describe(self) -> dict:
        """The options as JSON-ready values (arrays, images and callbacks left out)."""
        skip = {"init_image", "callback", "init_z", "noise"}
        described = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        described["sampler"] = dict(self.sampler)
        return described


@dataclass
class GenerationResult:
    """The samples of one `generate` call (or one batch of `iter_batches`)."""

    images: list[Image.Image]  # n RGB images
    z: np.ndarray  # float32 [n, D]: final codes
    logp: np.ndarray  # float32 [n]: log p(condition | z) at the final codes (the `then` condition after a switch)
    acceptance: np.ndarray  # float32 [n]: fraction of proposals accepted (1 for sgld; 1 when steps is 0)
    indices: list[int]  # the sample index of each image (its rng is [seed, index])
    options: GenerateOptions  # the options, with the seed actually used
    config: SamplerConfig  # the sampler settings actually used
    bundle_name: str
    pixels: np.ndarray = field(repr=False)  # uint8 [n, H, W, 3], the same images as an array

    @classmethod
    def concatenate(cls, parts: list[GenerationResult]) -> GenerationResult:
        """One result from the results of consecutive batches of one run."""
        first = parts[0]
        return cls(
            images=[image for part in parts for image in part.images],
            z=np.concatenate([p.z for p in parts]),
            logp=np.concatenate([p.logp for p in parts]),
            acceptance=np.concatenate([p.acceptance for p in parts]),
            indices=[i for part in parts for i in part.indices],
            options=first.options,
            config=first.config,
            bundle_name=first.bundle_name,
            pixels=np.concatenate([p.pixels for p in parts]),
        )


@dataclass
class _Run:
    """A checked `generate` request, ready to run batch by batch."""

    options: GenerateOptions
    config: SamplerConfig
    sampler: SGLDSampler
    targets: list[tuple[int, GradientTarget]]  # (first step, target) in step order
    init_z: np.ndarray | None
    noise: np.ndarray | None
    component_probs: np.ndarray | None
    batches: list[range]


class Pipeline:
    """A bundle's graphs on one device, ready to generate."""

    def __init__(self, bundle: Bundle, factory: SessionFactory):
        self.bundle = bundle
        self.factory = factory
        self.class_index = ClassIndex(bundle.classes) if bundle.classes else None
        self._runners: dict[str, GraphRunner] = {}
        self._lock = threading.Lock()
        self.runner("generator")

    @classmethod
    def from_bundle(
        cls, bundle_or_path: Bundle | str | Path | None = None, device: str = "auto", threads: int | None = None
    ) -> Pipeline:
        """A pipeline for a Bundle, a bundle path or shipped name, or None (the default bundle)."""
        bundle = bundle_or_path if isinstance(bundle_or_path, Bundle) else load_bundle(bundle_or_path)
        return cls(bundle, SessionFactory(device=device, threads=threads))

    def runner(self, role: str) -> GraphRunner:
        """The checked session of one graph, opened on first use."""
        with self._lock:
            if role not in self._runners:
                self._runners[role] = self.factory.create(self.bundle, role)
            return self._runners[role]

    def open_all(self) -> dict[str, GraphRunner]:
        """Open (and so check) every graph of the bundle."""
        return {role: self.runner(role) for role in self.bundle.graphs}

    # --- building blocks -------------------------------------------------------------

    def sampler_config(self, preset: str | None = None, condition: str | None = None, **overrides) -> SamplerConfig:
        """The bundle's sampler defaults, then its settings for the `condition` ("class" or "caption"; None: the
        plain defaults), then the preset, then explicit overrides (None = keep)."""
        settings = {**self.bundle.sampler, "clip": self.bundle.clip}
        if condition is not None:
            if condition not in CONDITIONS:
                raise InputError(f"condition must be one of {', '.join(CONDITIONS)}, not {condition!r}")
            settings.update(self.bundle.sampler_by_condition.get(condition, {}))
        if preset is not None:
            if preset not in self.bundle.presets:
                known = ", ".join(sorted(self.bundle.presets)) or "none"
                raise InputError(f"unknown preset '{preset}' (this bundle's presets: {known})")
            settings.update(self.bundle.presets[preset])
        config = SamplerConfig(**settings).updated(**overrides)
        if config.start == "conditioned" and not isinstance(self.bundle.prior, GaussianMixturePrior):
            raise InputError(
                f"start 'conditioned' needs a gaussian mixture prior; bundle '{self.bundle.name}' has "
                f"a {self.bundle.prior.describe()}: use start 'init'"
            )
        return config

    def class_weights(self, spec: str) -> np.ndarray:
        """Class weights float32 [K] from a class spec (see ClassIndex.weights)."""
        if self.class_index is None:
            raise InputError(f"bundle '{self.bundle.name}' has no classes; use a caption instead")
        return self.class_index.weights(spec)

    def caption_tokens(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int64 [T], mask float32 [T]) for a caption."""
        if self.bundle.vocabulary is None or not self.bundle.has_graph("caption_grad"):
            raise InputError(f"bundle '{self.bundle.name}' has no captioner; use --class instead")
        return caption_tokens(caption, self.bundle.vocabulary, self.bundle.max_tokens)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Images uint8 [B, H, W, 3] from codes float32 [B, D]."""
        return self.runner("generator").run(z=np.ascontiguousarray(z, dtype=np.float32))["image"]

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Codes float32 [B, D] from images uint8 [B, H, W, 3] (RGB, the bundle's size)."""
        if not self.bundle.has_graph("encoder"):
            raise InputError(f"bundle '{self.bundle.name}' has no encoder, so it cannot start from an image")
        z = self.runner("encoder").run(image=images)["z"]
        if not np.isfinite(z).all():
            raise BundleError(f"bundle '{self.bundle.name}': graph encoder returned non-finite codes for an image")
        return z

    def target(self, classes: str | None, caption: str | None, path: str = "latent") -> GradientTarget:
        """The gradient target for a class spec or a caption on the latent or composite path."""
        if path not in PATHS:
            raise InputError(f"path must be one of {', '.join(PATHS)}, not '{path}'")
        _check_condition(classes, caption)
        if caption is not None:
            if path == "composite":
                raise InputError("the composite path samples towards classes only; drop --caption or use --path latent")
            tokens, mask = self.caption_tokens(caption)
            return GradientTarget(self.runner("caption_grad"), {"tokens": tokens, "mask": mask})
        weights = self.class_weights(classes)
        role = PATH_ROLES[path]
        if not self.bundle.has_graph(role):
            raise InputError(f"bundle '{self.bundle.name}' has no {role} graph; use another --path")
        return GradientTarget(self.runner(role), {"weights": weights})

    # --- the loop --------------------------------------------------------------------

    def generate(self, options: GenerateOptions | None = None, **kwargs) -> GenerationResult:
        """Run the chains and decode them; kwargs override fields of `options` (sampler settings included)."""
        return GenerationResult.concatenate(list(self.iter_batches(options, **kwargs)))

    def iter_batches(self, options: GenerateOptions | None = None, **kwargs) -> Iterator[GenerationResult]:
        """Like `generate`, one result per batch of chains as each finishes (memory flat in n). Every
        check runs before the first batch starts."""
        run = self._prepare((options or GenerateOptions()).updated(**kwargs))
        return (self._run_batch(run, number, rows) for number, rows in enumerate(run.batches))

    def resolve(self, options: GenerateOptions) -> tuple[GenerateOptions, SamplerConfig]:
        """The options and sampler settings a run of `options` uses (seed drawn, switch_at and start set),
        checked; what a run's files record, known before it runs."""
        _check_condition(options.classes, options.caption)
        check_int("n", options.n, 1, MAX_SAMPLES)
        check_int("batch size", options.batch_size, 1, MAX_BATCH)
        check_int("start index", options.start_index, 0, 2**63 - 1)
        seed = secrets.randbits(32) if options.seed is None else check_int("seed", options.seed, 0, 2**63 - 1)
        options = replace(options, seed=seed)
        config = self.sampler_config(options.preset, options.condition, **options.sampler)
        if options.init_image is not None:
            if options.sampler.get("start") not in (None, "image"):
                raise InputError(f"an init image sets the start; drop start '{options.sampler['start']}'")
            config = replace(config, start="image")
        elif config.start == "image":
            raise InputError("start 'image' needs an init image (--init-image)")
        if options.then is not None:
            switch_at = config.steps // 2 if options.switch_at is None else options.switch_at
            if config.steps < 2:
                raise InputError("switching the condition (then) needs at least 2 steps")
            options = replace(options, switch_at=check_int("switch_at", switch_at, 1, config.steps - 1))
        elif options.switch_at is not None:
            raise InputError("switch_at needs a condition to switch to (then)")
        return options, config

    def _prepare(self, options: GenerateOptions) -> _Run:
        options, config = self.resolve(options)
        n, batch_size = options.n, options.batch_size
        targets = [(0, self.target(options.classes, options.caption, options.path))]
        if options.then is not None:
            then = (options.then, None) if options.classes is not None else (None, options.then)
            targets.append((options.switch_at, self.target(*then, options.path)))
        dim = self.bundle.latent_dim
        init_z = self._checked_array("init_z", options.init_z, (n, dim))
        noise = self._checked_array("noise", options.noise, (config.steps, n, dim))
        if options.init_image is not None and init_z is None:
            pixels = to_pixels(options.init_image, *self.bundle.image_hw)[None]
            init_z = np.repeat(self.encode(pixels), n, axis=0)
        component_probs = None
        if init_z is None and config.start == "conditioned":
            component_logp, _ = targets[0][1](self.bundle.prior.means.astype(np.float32))
            component_probs = self.bundle.prior.conditioned_probs(component_logp, config.condition_scale)
        return _Run(
            options=options,
            config=config,
            sampler=SGLDSampler(config, self.bundle.prior),
            targets=targets,
            init_z=init_z,
            noise=noise,
            component_probs=component_probs,
            batches=[range(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)],
        )

    def _run_batch(self, run: _Run, number: int, rows: range) -> GenerationResult:
        options, config, dim = run.options, run.config, self.bundle.latent_dim
        rngs = [np.random.default_rng([options.seed, options.start_index + row]) for row in rows]
        if run.init_z is not None:
            z = run.init_z[rows.start : rows.stop].copy()
        elif run.component_probs is not None:
            z = np.stack([self.bundle.prior.sample(rng, run.component_probs) for rng in rngs])
        else:
            z = np.stack([self.bundle.init.sample(rng) for rng in rngs])
        switches = dict(run.targets)
        target = switches[0]
        state = ChainState.at(z, target)
        if np.isfinite(z).all() and not (np.isfinite(state.logp).all() and np.isfinite(state.grad).all()):
            raise BundleError(
                f"bundle '{self.bundle.name}': graph {target.runner.role} returned non-finite values"
                " at the chains' (finite) start codes"
            )
        _check_finite(state, 0, config)
        total = config.steps * len(run.batches)
        mala = config.method == "mala"
        # Each chain's next NOISE_CHUNK steps of noise, drawn into one buffer per batch: one draw of [count, D]
        # per chain gives the numbers of count draws of [D], so a sample does not depend on the batch size.
        normal = np.empty((len(rows), NOISE_CHUNK, dim), dtype=np.float32)  # [b, chunk, D]
        uniform = np.empty((len(rows), NOISE_CHUNK)) if mala else None  # [b, chunk]: mala's accept draws
        for step in range(config.steps):
            if step in switches and step > 0:
                target = switches[step]
                state = replace(ChainState.at(state.z, target), accepted=state.accepted)
            chunk_step = step % NOISE_CHUNK
            if chunk_step == 0:
                count = min(NOISE_CHUNK, config.steps - step)
                for row, rng in enumerate(rngs):
                    rng.standard_normal(out=normal[row, :count], dtype=np.float32)
                    if mala:
                        rng.random(out=uniform[row, :count])
            step_noise = normal[:, chunk_step] if run.noise is None else run.noise[step, rows.start : rows.stop]
            state = run.sampler.step(state, target, step_noise, uniform[:, chunk_step] if mala else None, step)
            _check_finite(state, step + 1, config)
            if options.callback is not None:
                options.callback(number * config.steps + step + 1, total, state.z)
        pixels = self.decode(state.z)
        acceptance = state.accepted / config.steps if config.steps else np.ones(len(rows))
        return GenerationResult(
            images=[Image.fromarray(image) for image in pixels],
            z=state.z,
            logp=state.logp.astype(np.float32),
            acceptance=acceptance.astype(np.float32),
            indices=[options.start_index + row for row in rows],
            options=options,
            config=config,
            bundle_name=self.bundle.name,
            pixels=pixels,
        )

    @staticmethod
    def _checked_array(name: str, array: np.ndarray | None, shape: tuple) -> np.ndarray | None:
        if array is None:
            return None
        array = np.asarray(array)
        if array.shape != shape or not np.issubdtype(array.dtype, np.floating):
            raise InputError(
                f"{name} must be a float array of shape {list(shape)}, not {array.dtype} {list(array.shape)}"
            )
        if not np.all(np.isfinite(array)):
            raise InputError(f"{name} has non-finite values")
        return array.astype(np.float32)


def _check_condition(classes: str | None, caption: str | None) -> None:
    if (classes is None) == (caption is None):
        raise InputError("give exactly one of a class (--class) or a caption (--caption)")


def _check_finite(state: ChainState, step: int, config: SamplerConfig) -> None:
    """SamplingError when a chain's code, gradient or log-probability is not finite after `step` steps."""
    for name, array in (("code z", state.z), ("gradient", state.grad), ("log-probability", state.logp)):
        if not np.isfinite(array).all():
            where = "at the start" if step == 0 else f"at step {step} of {config.steps}"
            raise SamplingError(
                f"the chains diverged {where} (non-finite {name}); lower --eps1 (now {config.eps1:g}) or "
                f"--condition-scale (now {config.condition_scale:g}), or use --sampler mala"
            )
