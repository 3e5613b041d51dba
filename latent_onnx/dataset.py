"""Labelled synthetic datasets: many images per class (or caption), sharded, resumable, on local worker
processes or a Ray cluster (`latent-onnx dataset`, `write_dataset`).

A dataset is a pure function of its `DatasetSettings`: image i of condition c is sample i of a
`generate` run with the condition's own seed (a hash of the dataset seed and the condition), so each
file's bytes do not depend on the backend, the worker count or the order in which shards finish.
Workers only make bytes; the driver alone writes files and the dataset manifest
(`OUT/latent-onnx-dataset.json`), each shard to a temporary name first, then renamed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import io
import json
import multiprocessing
import os
import re
import tarfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .bundle import sha256_file
from .conditioning import ClassIndex
from .contracts import CONDITIONS
from .errors import InputError, LatentOnnxError, OutputError
from .images import check_output_dir, png_bytes, write_atomically
from .metadata import bundle_ref, png_text
from .pipeline import GenerateOptions, Pipeline, condition_kind
from .sampler import check_int

FORMATS = ("imagefolder", "webdataset")
BACKENDS = ("local", "ray")
MANIFEST_NAME = "latent-onnx-dataset.json"
STATE_DIR = ".latent-onnx"  # lock and imagefolder shard parts (hidden: readers skip it)
MANIFEST_FORMAT = "latent-onnx-dataset"
MAX_ATTEMPTS = 2  # a shard whose worker dies is made once more, then the run stops
MAX_PER_CLASS = 10**8
MAX_SHARD_SIZE = 100_000


class WorkerError(LatentOnnxError):
    """A dataset worker died (twice on one shard), or the Ray cluster cannot be used."""

    exit_code = 8


@dataclass(frozen=True)
class DatasetSettings:
    """What the dataset is: the same settings always give the same files."""

    bundle: str | None = None  # bundle directory or shipped name (None: the default bundle)
    classes: str | None = None  # "all" or "name-or-index,..."; None: all classes unless captions are given
    captions: tuple[str, ...] = ()  # captions, one condition (folder, label) each, after the classes
    per_class: int = 100  # images per condition
    seed: int = 0  # dataset seed; condition c uses a seed hashed from (seed, c)
    shard_size: int = 1000  # images per shard (the unit of work, resume and, for webdataset, of tar files)
    format: str = "imagefolder"  # "imagefolder" (Hugging Face) or "webdataset" (tar shards)
    preset: str | None = None  # a named sampler preset of the bundle
    sampler: Mapping[str, Any] = field(default_factory=dict)  # SamplerConfig overrides (None = the bundle's)


@dataclass(frozen=True)
class RunOptions:
    """How a dataset is made; none of these change a byte of it."""

    backend: str = "local"  # "local" worker processes or "ray" actors
    workers: int = 1  # worker processes (local) or actors (ray)
    ray_address: str | None = None  # "host:port" of a running Ray cluster; None starts a local one
    threads: int | None = None  # ONNX Runtime threads per worker (default: cores // workers)
    device: str = "auto"  # "auto", "cpu" or "cuda"
    batch_size: int = 16  # chains run together in a worker
    overwrite: bool = False  # replace a dataset with other settings in OUT


@dataclass(frozen=True)
class Condition:
    """One label of the dataset: a class (by index) or a caption."""

    label: str  # the class's display name or the caption
    folder: str  # imagefolder folder and sample-name prefix
    class_index: int | None  # the bundle's class index (classes only)
    caption: str | None  # the caption (captions only)
    seed: int  # this condition's generate seed

    def options(self, start: int, count: int, settings: DatasetSettings, batch_size: int) -> GenerateOptions:
        """The generate options for images start .. start + count - 1 of this condition."""
        classes = None if self.class_index is None else str(self.class_index)
        return GenerateOptions(
            classes=classes,
            caption=self.caption,
            n=count,
            seed=self.seed,
            start_index=start,
            batch_size=batch_size,
            preset=settings.preset,
        ).updated(**settings.sampler)


@dataclass(frozen=True)
class Shard:
    """Images [start, stop) of the dataset's flat order (condition by condition, index by index)."""

    number: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.number:06d}"

    def segments(self, per_class: int) -> Iterator[tuple[int, int, int]]:
        """(condition position, first index, count) for each condition the shard touches."""
        position = self.start
        while position < self.stop:
            condition, index = divmod(position, per_class)
            count = min(per_class - index, self.stop - position)
            yield condition, index, count
            position += count


@dataclass
class Plan:
    """Checked settings, ready for workers (picklable)."""

    settings: DatasetSettings
    bundle_root: str  # the resolved bundle directory every worker opens
    bundle_sha256: str  # its manifest sha256, checked by every worker
    identity: dict  # what the dataset manifest records and a rerun must match
    conditions: list[Condition]
    total: int

    def shards(self) -> list[Shard]:
        size = self.settings.shard_size
        return [Shard(number, lo, min(lo + size, self.total)) for number, lo in enumerate(range(0, self.total, size))]

    def stem(self, condition: Condition, index: int) -> str:
        """The sample's file stem (imagefolder) and key (webdataset)."""
        return f"{condition.folder}-{index:0{max(6, len(str(self.settings.per_class - 1)))}d}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "condition"


def condition_seed(seed: int, key: str) -> int:
    """The generate seed of one condition: 63 bits of sha256(dataset seed, condition key)."""
    digest = hashlib.sha256(f"latent-onnx-dataset\0{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def plan_dataset(settings: DatasetSettings) -> Plan:
    """Check every setting (bad class names and caption words reported all at once) and resolve the
    conditions; opens the bundle's graphs once to check them. InputError or BundleError, nothing written."""
    per_class = check_int("per-class", settings.per_class, 1, MAX_PER_CLASS)
    check_int("shard size", settings.shard_size, 1, MAX_SHARD_SIZE)
    check_int("seed", settings.seed, 0, 2**63 - 1)
    if settings.format not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, not {settings.format!r}")
    pipe = Pipeline.from_bundle(settings.bundle, device="cpu", threads=1)
    bundle = pipe.bundle
    # the settings each kind of condition runs with (the bundle's may differ by kind); bad ones fail here
    configs = {kind: pipe.sampler_config(settings.preset, kind, **settings.sampler) for kind in CONDITIONS}
    classes = settings.classes if settings.classes is not None or settings.captions else "all"
    found: list[tuple[str, int | None, str | None, str]] = []  # (label, class index, caption, seed key)
    problems: list[str] = []
    if classes is not None:
        if pipe.class_index is None:
            problems.append(f"bundle '{bundle.name}' has no classes")
        elif classes.strip().lower() == "all":
            found += [(names[0], k, None, f"class:{k}") for k, names in enumerate(bundle.classes)]
        else:
            index = ClassIndex(bundle.classes)
            for item in (item.strip() for item in classes.split(",")):
                try:
                    k = index.lookup(item)
                except InputError as error:
                    problems.append(str(error).split(" (list them")[0])
                    continue
                found.append((bundle.classes[k][0], k, None, f"class:{k}"))
    for caption in settings.captions:
        try:
            pipe.caption_tokens(caption)
        except InputError as error:
            problems.append(f"caption {caption!r}: {error}")
            continue
        text = " ".join(caption.split())
        found.append((text, None, text, f"caption:{text.lower()}"))
    seen: set[str] = set()
    for label, _, _, key in found:
        if key in seen:
            problems.append(f"{label!r} is listed twice")
        seen.add(key)
    if problems:
        raise InputError(f"{len(problems)} problem(s) with the conditions: " + "; ".join(problems))
    if not found:
        raise InputError("no conditions: give --classes or --captions")
    for _, k, caption, _ in found:  # opens (and so checks) each gradient graph the run uses
        pipe.target(None if k is None else str(k), caption)
    slugs = [_slug(label) for label, *_ in found]
    conditions = [
        Condition(
            label=label,
            folder=slug if slugs.count(slug) == 1 else f"{slug}-{position}",
            class_index=k,
            caption=caption,
            seed=condition_seed(settings.seed, key),
        )
        for position, ((label, k, caption, key), slug) in enumerate(zip(found, slugs))
    ]
    identity = {
        "bundle": {"name": bundle.name, "ref": bundle_ref(bundle), "manifest_sha256": bundle.manifest_sha256},
        "conditions": [
            {"label": c.label, "folder": c.folder, "class_index": c.class_index, "caption": c.caption, "seed": c.seed}
            for c in conditions
        ],
        "per_class": per_class,
        "seed": settings.seed,
        "shard_size": settings.shard_size,
        "format": settings.format,
        "preset": settings.preset,
        "sampler": {
            kind: configs[kind].to_dict() for kind in dict.fromkeys(condition_kind(c.caption) for c in conditions)
        },
    }
    return Plan(
        settings=settings,
        bundle_root=str(bundle.root),
        bundle_sha256=bundle.manifest_sha256,
        identity=identity,
        conditions=conditions,
        total=len(conditions) * per_class,
    )


# --- workers: make a shard's bytes ---------------------------------------------------------


Sample = tuple[str, str, bytes, dict]  # (folder, stem, PNG bytes, metadata row)


class ShardMaker:
    """One worker's pipeline (its own ONNX Runtime sessions), making shards' samples."""

    def __init__(self, plan: Plan, threads: int, device: str, batch_size: int):
        self.plan, self.batch_size = plan, batch_size
        self.pipe = Pipeline.from_bundle(plan.bundle_root, device=device, threads=threads)
        if self.pipe.bundle.manifest_sha256 != plan.bundle_sha256:
            raise OutputError(
                f"the bundle at {plan.bundle_root} changed since the run started (manifest sha256 "
                f"{self.pipe.bundle.manifest_sha256[:12]}, expected {plan.bundle_sha256[:12]})"
            )

    def make(self, shard: Shard) -> list[Sample]:
        """The shard's samples in dataset order: PNG bytes as `generate` writes them, and their rows."""
        plan, samples = self.plan, []
        for position, start, count in shard.segments(plan.settings.per_class):
            condition = plan.conditions[position]
            for batch in self.pipe.iter_batches(condition.options(start, count, plan.settings, self.batch_size)):
                for row, index in enumerate(batch.indices):
                    data = png_bytes(batch.images[row], png_text(self.pipe.bundle, batch, row))
                    samples.append(
                        (
                            condition.folder,
                            plan.stem(condition, index),
                            data,
                            {
                                "label": condition.label,
                                "label_index": position,
                                "class_index": condition.class_index,
                                "caption": condition.caption,
                                "seed": condition.seed,
                                "index": index,
                                "logp": float(batch.logp[row]),
                                "sha256": hashlib.sha256(data).hexdigest(),
                            },
                        )
                    )
        return samples


_worker: ShardMaker | None = None  # the ShardMaker of a local worker process


def _start_local_worker(plan: Plan, threads: int, device: str, batch_size: int) -> None:
    global _worker
    _worker = ShardMaker(plan, threads, device, batch_size)


def _make_local(shard: Shard) -> list[Sample]:
    return _worker.make(shard)


class WorkerDied(Exception):
    """A worker process or actor ended while making a shard."""


class LocalWorkers:
    """W worker processes, each a one-process pool (so a death is pinned on the shard it was making)."""

    def __init__(self, plan: Plan, run: RunOptions):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.threads = run.threads or max(1, cores // run.workers)
        self.args = (plan, self.threads, run.device, run.batch_size)
        self.context = multiprocessing.get_context("spawn")  # no forked ONNX Runtime or rich threads
        self.pools = [self._pool() for _ in range(run.workers)]
        self.running: dict[concurrent.futures.Future, int] = {}

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            1, mp_context=self.context, initializer=_start_local_worker, initargs=self.args
        )

    def submit(self, slot: int, shard: Shard) -> None:
        self.running[self.pools[slot].submit(_make_local, shard)] = slot

    def next_done(self) -> tuple[int, Callable[[], list[Sample]]]:
        """(slot, a call that returns the samples or raises WorkerDied) of a finished shard."""
        done, _ = concurrent.futures.wait(self.running, return_when=concurrent.futures.FIRST_COMPLETED)
        future = next(iter(done))
        slot = self.running.pop(future)

        def result() -> list[Sample]:
            try:
                return future.result()
            except concurrent.futures.process.BrokenProcessPool:
                raise WorkerDied(f"worker process {slot} ended") from None

        return slot, result

    def restart(self, slot: int) -> None:
        self.pools[slot].shutdown(wait=False, cancel_futures=True)
        self.pools[slot] = self._pool()

    def close(self, finished: bool) -> None:
        """Let the workers exit when the run `finished`, else stop them, also mid-shard (an error, an interrupt)."""
        for pool in self.pools:
            processes = list((pool._processes or {}).values())
            pool.shutdown(wait=finished, cancel_futures=True)
            for process in processes:
                process.terminate()


# --- the driver: files and the dataset manifest ----------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1).encode()
    write_atomically(path, lambda temp: temp.write_bytes(text))


class DatasetFolder:
    """OUT: the dataset's files, its manifest and the shards recorded in it."""

    def __init__(self, out: Path, plan: Plan):
        self.out, self.plan = out, plan
        self.manifest_path = out / MANIFEST_NAME
        self.parts = out / STATE_DIR / "shards"
        self.manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": 1,
            "software": f"latent-onnx {__version__}",
            "settings": plan.identity,
            "total": plan.total,
            "shard_count": len(plan.shards()),
            "complete": False,
            "shards": {},
        }

    def shard_file(self, shard: Shard) -> Path:
        if self.plan.settings.format == "webdataset":
            return self.out / f"shard-{shard.name}.tar"
        return self.parts / f"shard-{shard.name}.jsonl"

    def open(self, overwrite: bool) -> None:
        """Adopt the manifest already in OUT (same settings), replace it (overwrite), or start one."""
        old = self._read_manifest()
        if old is not None:
            if {k: old.get(k) for k in ("software", "settings")} == {
                k: self.manifest[k] for k in ("software", "settings")
            }:
                self.manifest["shards"] = old.get("shards", {})
            elif not overwrite:
                raise OutputError(
                    f"{self.out} holds a dataset with other settings ({_difference(old, self.manifest)}); "
                    f"rerun with the same settings to resume, or pass --overwrite to replace it"
                )
            else:
                self._remove(old)
        elif any(p.name != STATE_DIR for p in self.out.iterdir()) and not overwrite:
            raise OutputError(
                f"{self.out} is not empty and holds no latent-onnx dataset; choose an empty or new "
                f"folder, or pass --overwrite to write into it"
            )
        self.parts.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        self.save()

    def _read_manifest(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise OutputError(
                f"cannot read the dataset manifest {self.manifest_path}: {error}; pass --overwrite to "
                f"replace the dataset"
            ) from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise OutputError(f"{self.manifest_path} is not a latent-onnx dataset manifest; choose another folder")
        return data

    def _remove(self, old: dict) -> None:
        """Delete the files of the dataset `old` describes (and nothing else)."""
        settings = old.get("settings", {})
        for condition in settings.get("conditions", []):
            folder = self.out / condition["folder"]
            for file in folder.glob(f"{condition['folder']}-*.png"):
                file.unlink()
        for pattern in ("shard-*.tar", "metadata.jsonl", f"{STATE_DIR}/shards/shard-*.jsonl"):
            for file in self.out.glob(pattern):
                file.unlink()
        self.manifest_path.unlink()

    def _remove_temporaries(self) -> None:
        """Temporary files of a run that was stopped (a shard is renamed into place only when whole)."""
        folders = [self.out, self.parts] + [self.out / c.folder for c in self.plan.conditions]
        for folder in folders:
            for file in folder.glob(".*.tmp"):
                file.unlink()

    def save(self) -> None:
        """Write the manifest whole; shards in order, so it does not depend on the order they finished in."""
        self.manifest["shards"] = dict(sorted(self.manifest["shards"].items()))
        _write_json(self.manifest_path, self.manifest)

    def verified(self, shard: Shard) -> bool:
        """Whether a recorded shard's files are all there with their recorded sha256."""
        entry = self.manifest["shards"].get(shard.name)
        file = self.shard_file(shard)
        if entry is None or not file.is_file() or sha256_file(file) != entry["sha256"]:
            return False
        if self.plan.settings.format == "imagefolder":
            with open(file, encoding="utf-8") as stream:
                for line in stream:
                    row = json.loads(line)
                    image = self.out / row["file_name"]
                    if not image.is_file() or sha256_file(image) != row["sha256"]:
                        return False
        return True

    def write(self, shard: Shard, samples: list[Sample]) -> None:
        """Write one shard's files (each whole, under a temporary name first) and record it."""
        file = self.shard_file(shard)
        if self.plan.settings.format == "webdataset":
            write_atomically(file, lambda temp: _write_tar(temp, samples))
        else:
            lines = []
            for folder, stem, data, row in samples:
                name = f"{folder}/{stem}.png"
                write_atomically(self.out / name, lambda temp, data=data: temp.write_bytes(data))
                lines.append(json.dumps({"file_name": name, **row}) + "\n")
            text = "".join(lines).encode()
            write_atomically(file, lambda temp: temp.write_bytes(text))
        self.manifest["shards"][shard.name] = {
            "file": file.relative_to(self.out).as_posix(),
            "sha256": sha256_file(file),
            "count": len(samples),
        }
        self.save()

    def finish(self) -> None:
        """After the last shard: imagefolder's metadata.jsonl (the shard parts in order); mark complete."""
        if self.plan.settings.format == "imagefolder":

            def concatenate(temp: Path) -> None:
                with open(temp, "wb") as stream:
                    for shard in self.plan.shards():
                        stream.write(self.shard_file(shard).read_bytes())

            write_atomically(self.out / "metadata.jsonl", concatenate)
        self.manifest["complete"] = True
        self.save()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold OUT's lock: a second run on the same folder stops instead of mixing shards."""
        (self.out / STATE_DIR).mkdir(parents=True, exist_ok=True)
        with open(self.out / STATE_DIR / "lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise OutputError(
                    f"another latent-onnx run is writing {self.out}; wait for it or choose another folder"
                ) from None
            yield


def _write_tar(path: Path, samples: list[Sample]) -> None:
    """A WebDataset shard: per sample <key>.png, <key>.cls (label index), <key>.txt (label), <key>.json (row);
    fixed mtime, owner and mode, so equal samples give equal bytes."""
    with tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for _, stem, data, row in samples:
            members = (
                ("png", data),
                ("cls", str(row["label_index"]).encode()),
                ("txt", row["label"].encode()),
                ("json", json.dumps(row, sort_keys=True).encode()),
            )
            for extension, content in members:
                info = tarfile.TarInfo(f"{stem}.{extension}")
                info.size, info.mtime, info.mode = len(content), 0, 0o644
                tar.addfile(info, io.BytesIO(content))


def _difference(old: dict, new: dict) -> str:
    """The first setting in which two dataset manifests differ, in words."""
    if old.get("software") != new["software"]:
        return f"made by {old.get('software')}, this is {new['software']}"
    if old.get("settings", {}).get("conditions") != new["settings"]["conditions"]:
        return "other classes or captions"
    return _first_change(old.get("settings", {}), new["settings"], []) or "other settings"


def _first_change(old, new, path: list[str]) -> str | None:
    """'key subkey ... old, not new' for the first leaf (in `new`'s order) where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*new, *(key for key in old if key not in new)]:
            found = _first_change(old.get(key), new.get(key), [*path, str(key)])
            if found:
                return found
        return None
    return None if old == new else f"{' '.join(path)} {old!r}, not {new!r}"


# --- the run ------------------------------------------------------------------------------------


@dataclass
class DatasetSummary:
    """What a `write_dataset` call did."""

    out: Path
    images: int  # images in the dataset
    shards: int  # shards in the dataset
    kept: int  # shards already finished (verified and kept)
    made: int  # shards made by this call
    seconds: float  # wall time of this call


class Progress:
    """Progress of a run; `write_dataset` calls `start` once, then `shard_done` per finished shard."""

    def start(self, total: int, done: int, shards: int, kept: int) -> None:
        pass

    def shard_done(self, shard: Shard, count: int) -> None:
        pass


def write_dataset(
    out: str | os.PathLike, settings: DatasetSettings, run: RunOptions = RunOptions(), progress: Progress | None = None
) -> DatasetSummary:
    """Write (or resume, or complete) the dataset of `settings` in folder `out`; every check runs before
    any work. LatentOnnxError subclasses on bad input, unusable output, dead workers or a dead cluster."""
    began = time.perf_counter()
    progress = progress or Progress()
    if run.backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, not {run.backend!r}")
    check_int("workers", run.workers, 1, 1024)
    if run.threads is not None:
        check_int("threads", run.threads, 1, 1024)
    check_int("batch size", run.batch_size, 1, 4096)
    if run.backend == "ray":
        from .dataset_ray import RayWorkers, check_ray  # optional extra: imported only when asked for

        check_ray(run.ray_address)
    plan = plan_dataset(settings)
    out = Path(out).expanduser()
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    folder = DatasetFolder(out, plan)
    with folder.locked():
        folder.open(run.overwrite)
        shards = plan.shards()
        todo = [shard for shard in shards if not folder.verified(shard)]
        for shard in todo:
            folder.manifest["shards"].pop(shard.name, None)
        kept = len(shards) - len(todo)
        progress.start(plan.total, plan.total - sum(s.stop - s.start for s in todo), len(shards), kept)
        if todo:
            workers = RayWorkers(plan, run) if run.backend == "ray" else LocalWorkers(plan, run)
            try:
                _run_shards(workers, todo, folder, progress, min(run.workers, len(todo)))
            except BaseException:
                workers.close(finished=False)
                raise
            workers.close(finished=True)
        folder.finish()
    return DatasetSummary(
        out=out, images=plan.total, shards=len(shards), kept=kept, made=len(todo), seconds=time.perf_counter() - began
    )


def _run_shards(workers, todo: list[Shard], folder: DatasetFolder, progress: Progress, slots: int) -> None:
    """Keep every worker busy with one shard; write each shard as it comes back; make a shard whose
    worker died once more, then stop with WorkerError."""
    pending, attempts = deque(todo), {}
    running: dict[int, Shard] = {}

    def feed(slot: int) -> None:
        if pending:
            running[slot] = pending.popleft()
            workers.submit(slot, running[slot])

    for slot in range(slots):
        feed(slot)
    while running:
        slot, result = workers.next_done()
        shard = running.pop(slot)
        try:
            samples = result()
        except WorkerDied as death:
            attempts[shard.name] = attempts.get(shard.name, 0) + 1
            if attempts[shard.name] >= MAX_ATTEMPTS:
                raise WorkerError(
                    f"a worker died {MAX_ATTEMPTS} times while making shard {shard.name} (images "
                    f"{shard.start} .. {shard.stop - 1}; last: {death}); the finished shards are kept, "
                    f"run the same command again to resume"
                ) from None
            workers.restart(slot)
            pending.appendleft(shard)
            feed(slot)
            continue
        feed(slot)
        folder.write(shard, samples)
        progress.shard_done(shard, len(samples))


class ConsoleProgress(Progress):
    """On a terminal, a rich bar (images done, images per second, ETA); elsewhere a line per shard on stderr."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.console, self.bar, self.task = console, None, None
        if console.is_terminal:
            self.bar = RichProgress(
                TextColumn("dataset"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("images"),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )

    def __enter__(self) -> ConsoleProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start(self, total: int, done: int, shards: int, kept: int) -> None:
        self.total, self.done, self.shards, self.finished = total, done, shards, kept
        self.began, self.first = time.perf_counter(), done
        if self.bar is not None:
            self.task = self.bar.add_task("dataset", total=total, completed=done, rate="")
        elif kept:
            self.console.print(f"kept {kept} finished shard(s) ({done} images, verified)")

    def shard_done(self, shard: Shard, count: int) -> None:
        self.done, self.finished = self.done + count, self.finished + 1
        rate = (self.done - self.first) / max(time.perf_counter() - self.began, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=f"{rate:.1f} images/s")
            return
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        self.console.print(
            f"shard {shard.name} done ({self.finished}/{self.shards} shards, {self.done}/{self.total} "
            f"images, {rate:.1f} images/s, ETA {eta:.0f} s)"
        )


def read_captions(path: str | os.PathLike) -> tuple[str, ...]:
    """The captions of a text file: one per line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the captions file {path}: {getattr(error, 'strerror', None) or error}") from None
    captions = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not captions:
        raise InputError(f"the captions file {path} has no captions")
    return captions
