"""Load and verify a bundle directory (docs/bundle-format.md; the contract itself is latent_onnx.contracts).

Every field of manifest.json is validated, every file is confined to the bundle directory and
checked against its sha256, and graphs are handed out as verified bytes (never re-read by path).
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .contracts import CONDITIONS, FORMAT, FORMAT_VERSION, FORMAT_VERSIONS, NAME_PATTERN, NAME_RULE, ROLES
from .errors import BundleError, InputError
from .onnx_scan import MalformedModel, uses_external_data
from .priors import GaussianMixturePrior, GaussianPrior, check_mixture_arrays
from .sampler import SAMPLER_FIELDS, SamplerConfig

DEFAULT_BUNDLE = "fashion-colors"
BUNDLE_ENV = "LATENT_ONNX_BUNDLE"
SAMPLER_KEYS = tuple(
    name for name in SAMPLER_FIELDS if name != "clip"
)  # the manifest's sampler keys (clip: latent.clip)
_SHA_PATTERN = re.compile(r"[0-9a-f]{64}\Z")
_TOP_KEYS = {
    "format",
    "format_version",
    "name",
    "description",
    "license",
    "latent",
    "image",
    "classes",
    "caption",
    "graphs",
    "sampler",
    "sampler_by_condition",
    "presets",
    "provenance",
}


@dataclass(frozen=True)
class FileRef:
    """A file of the bundle as the manifest names it."""

    file: str  # relative POSIX path inside the bundle
    sha256: str  # 64 lowercase hex digits
    field: str  # manifest field that names it, for error messages


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. Graph bytes come from `graph_bytes(role)`, re-verified on every read."""

    root: Path  # the bundle directory (resolved)
    name: str
    description: str
    license: str
    latent_dim: int  # D
    prior: GaussianPrior | GaussianMixturePrior  # p(z) used in the sampler's prior term
    init: GaussianPrior | GaussianMixturePrior  # distribution of z_0
    clip: tuple[float, float] | None  # z clipped to [lo, hi] after every step
    image_hw: tuple[int, int]  # (H, W) of the generator's output
    classes: list[list[str]] | None  # per class index, its names (display name first)
    vocabulary: list[str] | None  # token id -> word, "<eos>" at 0
    max_tokens: int | None  # T of caption_grad
    graphs: dict[str, FileRef]  # role -> file
    sampler: dict  # the bundle's default sampler settings (SAMPLER_KEYS)
    sampler_by_condition: dict[str, dict]  # "class" / "caption" -> partial overrides of `sampler` for that condition
    presets: dict[str, dict]  # name -> partial sampler overrides (may also set "clip": None or (lo, hi))
    provenance: dict  # free-form
    manifest_sha256: str  # sha256 of manifest.json: identifies the bundle and, through it, every file
    manifest: dict = field(repr=False)  # the raw manifest

    @property
    def class_names(self) -> list[str]:
        """Display name of every class, by index (empty when the bundle has no classes)."""
        return [names[0] for names in self.classes or []]

    def has_graph(self, role: str) -> bool:
        return role in self.graphs

    def graph_bytes(self, role: str) -> bytes:
        """The verified bytes of a graph; BundleError when absent, changed or using external data."""
        if role not in self.graphs:
            raise BundleError(f"bundle '{self.name}' has no {role} graph")
        ref = self.graphs[role]
        data = _read_verified(self.root, ref)
        try:
            external = uses_external_data(data)
        except MalformedModel:
            raise BundleError(f"bundle '{self.name}': {ref.file} is not a valid ONNX file") from None
        if external:
            raise BundleError(
                f"bundle '{self.name}': {ref.file} uses ONNX external data, which bundles may not;"
                " re-export it as one self-contained file"
            )
        return data


def shipped_models_dir() -> Path:
    """Where the shipped bundles live: the installed data package, else the source tree's onnx_models/."""
    try:
        import latent_onnx.models as models  # installed by `pip install .`
    except ImportError:
        return Path(__file__).resolve().parent.parent / "onnx_models"
    return Path(next(iter(models.__path__)))


def shipped_bundle_names() -> list[str]:
    directory = shipped_models_dir()
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if (p / "manifest.json").is_file())


def looks_like_path(text: str) -> bool:
    """A bundle reference is a path when it contains a folder separator or starts with `.` or `~`;
    anything else is the name of a shipped bundle (so a folder in the working directory never shadows one)."""
    separators = [os.sep] + ([os.altsep] if os.altsep else []) + ["/"]
    return any(sep in text for sep in separators) or text.startswith((".", "~"))


def resolve_bundle_dir(path_or_name: str | os.PathLike | None) -> Path:
    """The bundle directory for a path, a shipped bundle name, or None (env LATENT_ONNX_BUNDLE, else the default)."""
    if path_or_name is None:
        path_or_name = os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE
    text = os.fspath(path_or_name)
    if isinstance(path_or_name, os.PathLike) or looks_like_path(text):
        path = Path(text).expanduser()
        if not (path / "manifest.json").is_file():
            raise BundleError(f"{path} is not a bundle directory (no manifest.json in it)")
        return path.resolve()
    names = shipped_bundle_names()
    if text in names:
        return (shipped_models_dir() / text).resolve()
    close = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    available = f"shipped bundles: {', '.join(names)}" if names else "no bundle is shipped in this installation"
    folder = f"; for the folder of that name write ./{text}" if Path(text).is_dir() else ""
    raise BundleError(
        f"no bundle named '{text}' ({hint}{available}); pass --bundle PATH (or set {BUNDLE_ENV}) to a bundle"
        f" directory (a path contains a / or starts with . or ~){folder}"
    )


def load_bundle(path_or_name: str | os.PathLike | None = None) -> Bundle:
    """Load, validate and verify a bundle: a directory path, a shipped bundle name, or None for the default."""
    root = resolve_bundle_dir(path_or_name)
    return _ManifestReader(root).read()


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _confined_path(root: Path, ref: FileRef) -> Path:
    """The absolute path of a bundle file; BundleError when its name could leave the bundle directory."""
    posix = PurePosixPath(ref.file)
    if (
        not ref.file
        or "\\" in ref.file
        or posix.is_absolute()
        or any(part in ("..", ".") for part in ref.file.split("/"))
        or re.match(r"[A-Za-z]:", ref.file)
    ):
        raise BundleError(
            f"bundle {root}: manifest field '{ref.field}' names '{ref.file}', which is not a plain relative path inside the bundle"
        )
    path = root.joinpath(*posix.parts)
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise BundleError(f"bundle {root}: '{ref.file}' ({ref.field}) resolves outside the bundle directory")
    return resolved


def _missing(root: Path, ref: FileRef) -> BundleError:
    return BundleError(f"bundle {root}: file '{ref.file}' ({ref.field}) is missing")


def _check_digest(root: Path, ref: FileRef, digest: str) -> None:
    """BundleError unless `digest` (sha256 hex of the file's bytes) is the one the manifest names."""
    if digest != ref.sha256:
        raise BundleError(
            f"bundle {root}: '{ref.file}' ({ref.field}) does not match its sha256 (truncated, corrupted or"
            " tampered with); restore the bundle from its source"
        )


def _read_verified(root: Path, ref: FileRef) -> bytes:
    path = _confined_path(root, ref)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _missing(root, ref) from None
    except OSError as error:
        raise BundleError(f"bundle {root}: cannot read '{ref.file}' ({ref.field}): {error.strerror}") from None
    _check_digest(root, ref, hashlib.sha256(data).hexdigest())
    return data


def _mixture_arrays(data: bytes) -> dict[str, np.ndarray] | str:
    """The float64 arrays of a prior .npz, or what is wrong with it (a file from the bundle: any shape of damage)."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return "not an .npz archive"
        with loaded as npz:
            raw = {key: npz[key] for key in ("weights", "means", "scale_tril")}
    except Exception as error:  # numpy and zipfile raise many kinds (ValueError, BadZipFile, EOFError, KeyError ...)
        return f"{type(error).__name__}: {error}".splitlines()[0]
    for key, array in raw.items():
        if array.dtype.kind not in "fiu":
            return f"{key} has dtype {array.dtype}"
    return {key: array.astype(np.float64) for key, array in raw.items()}


def sampler_settings_problem(values: dict) -> tuple[str, str] | None:
    """(key, what is wrong) for the first unusable entry of manifest sampler settings (any of SAMPLER_KEYS), or None.
    The one rule for the manifest's `sampler` and `presets`: the reader and the bundle writer both apply it."""
    for key, item in values.items():
        if key not in SAMPLER_KEYS:
            return key, f"is not a sampler setting (known: {', '.join(SAMPLER_KEYS)})"
        if key == "start" and item == "image":
            return key, 'cannot be "image" (that start is set by an init image)'
        try:
            SamplerConfig(**{key: item})
        except InputError as error:
            return key, f"is out of range: {error}"
        except TypeError:  # e.g. a list where a number belongs
            return key, "has the wrong type"
    return None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


F32_MAX = float(np.finfo(np.float32).max)  # numbers the graphs and the sampler see are float32
MAX_DIM = 1 << 16  # latent.dim, image sides, caption.max_tokens: far above any real bundle, below memory errors


class _ManifestReader:
    """Validates manifest.json field by field; every error names the field."""

    def __init__(self, root: Path):
        self.root = root

    def fail(self, where: str, message: str):
        raise BundleError(f"bundle {self.root}: manifest.json field '{where}' {message}")

    def read(self) -> Bundle:
        try:
            raw = (self.root / "manifest.json").read_bytes()
            manifest = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
        except json.JSONDecodeError as error:
            raise BundleError(
                f"bundle {self.root}: manifest.json is not valid JSON (line {error.lineno}: {error.msg})"
            ) from None
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:  # ValueError: NaN, 1e999, huge ints
            raise BundleError(f"bundle {self.root}: cannot read manifest.json ({error})") from None
        m = self.obj(manifest, "(top level)", required=set(), optional=_TOP_KEYS)
        if m.get("format") != FORMAT:
            self.fail("format", f'must be "{FORMAT}"')
        version = m.get("format_version")
        if version not in FORMAT_VERSIONS or isinstance(version, bool):
            self.fail(
                "format_version",
                f"must be one of {', '.join(map(str, FORMAT_VERSIONS))} (the versions this runtime"
                " reads); a newer bundle needs a newer latent-onnx",
            )
        name = self.string(m, "name")
        if not NAME_PATTERN.match(name):
            self.fail("name", f"must match {NAME_RULE}")

        latent = self.obj(m.get("latent"), "latent", required={"dim", "prior"}, optional={"init", "clip"})
        dim = self.integer(latent, "dim", "latent.dim", minimum=1)
        image = self.obj(m.get("image"), "image", required={"height", "width", "channels"})
        height = self.integer(image, "height", "image.height", minimum=1)
        width = self.integer(image, "width", "image.width", minimum=1)
        if image["channels"] != 3 or isinstance(image["channels"], bool):
            self.fail("image.channels", "must be 3")

        graphs_obj = self.obj(m.get("graphs"), "graphs", required={"generator"}, optional=set(ROLES))
        graphs = {role: self.file_ref(graphs_obj[role], f"graphs.{role}") for role in ROLES if role in graphs_obj}
        for ref in graphs.values():  # each graph's sha256 is checked when its bytes are read (graph_bytes)
            self.require_file(ref)

        classes = None
        if "classes" in m:
            classes = self.read_classes(self.file_ref(m["classes"], "classes"))
        elif "classifier" in graphs or "class_grad" in graphs or "composite_class_grad" in graphs:
            self.fail("classes", "is required when the bundle has a classifier or class gradient graph")

        vocabulary = max_tokens = None
        if "caption" in m:
            caption = self.obj(m["caption"], "caption", required={"vocabulary", "max_tokens"})
            vocabulary = self.read_vocabulary(self.file_ref(caption["vocabulary"], "caption.vocabulary"))
            max_tokens = self.integer(caption, "max_tokens", "caption.max_tokens", minimum=2)
        elif "caption_grad" in graphs:
            self.fail("caption", "is required when the bundle has a caption_grad graph")

        prior = self.distribution(latent["prior"], "latent.prior", dim)
        init = self.distribution(latent["init"], "latent.init", dim) if latent.get("init") is not None else prior
        clip = self.clip(latent.get("clip"))
        sampler = self.sampler(m.get("sampler"), "sampler", partial=False)
        by_condition = m.get("sampler_by_condition")  # null: none
        if by_condition is not None:
            self.obj(by_condition, "sampler_by_condition", required=set(), optional=set(CONDITIONS))
        sampler_by_condition = {
            kind: self.sampler(value, f"sampler_by_condition.{kind}", partial=True)
            for kind, value in (by_condition or {}).items()
        }
        presets_obj = m.get("presets") or {}
        if not isinstance(presets_obj, dict):
            self.fail("presets", "must be an object")
        presets = {key: self.preset(value, f"presets.{key}") for key, value in presets_obj.items()}
        provenance = m.get("provenance") or {}
        if not isinstance(provenance, dict):
            self.fail("provenance", "must be an object")
        return Bundle(
            root=self.root,
            name=name,
            description=self.string(m, "description", required=False),
            license=self.string(m, "license", required=False),
            latent_dim=dim,
            prior=prior,
            init=init,
            clip=clip,
            image_hw=(height, width),
            classes=classes,
            vocabulary=vocabulary,
            max_tokens=max_tokens,
            graphs=graphs,
            sampler=sampler,
            sampler_by_condition=sampler_by_condition,
            presets=presets,
            provenance=provenance,
            manifest_sha256=hashlib.sha256(raw).hexdigest(),
            manifest=manifest,
        )

    # --- field helpers -------------------------------------------------------------------

    def obj(self, value, where: str, required: set, optional: set = frozenset()) -> dict:
        if not isinstance(value, dict):
            self.fail(where, "must be an object" if value is not None else "is missing")
        missing = sorted(required - value.keys())
        if missing:
            self.fail(f"{where}.{missing[0]}" if where != "(top level)" else missing[0], "is missing")
        unknown = sorted(value.keys() - required - optional)
        if unknown:
            prefix = "" if where == "(top level)" else f"{where}."
            self.fail(f"{prefix}{unknown[0]}", f"is not a field of format version {FORMAT_VERSION}")
        return value

    def string(self, obj: dict, key: str, required: bool = True) -> str:
        value = obj.get(key, None if required else "")
        if not isinstance(value, str):
            self.fail(key, "must be a string")
        return value

    def integer(self, obj: dict, key: str, where: str, minimum: int, maximum: int = MAX_DIM) -> int:
        value = obj.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
            self.fail(where, f"must be an integer from {minimum} to {maximum}")
        return value

    def number(self, value, where: str, minimum: float, strict: bool) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= F32_MAX
        if not ok or value < minimum or (strict and value == minimum):
            self.fail(where, f"must be a finite float32 number {'>' if strict else '>='} {minimum:g}")
        return float(value)

    def file_ref(self, value, where: str) -> FileRef:
        value = self.obj(value, where, required={"file", "sha256"})
        if not isinstance(value["file"], str):
            self.fail(f"{where}.file", "must be a string")
        if not isinstance(value["sha256"], str) or not _SHA_PATTERN.match(value["sha256"]):
            self.fail(f"{where}.sha256", "must be 64 lowercase hex digits")
        ref = FileRef(file=value["file"], sha256=value["sha256"], field=f"{where}.file")
        _confined_path(self.root, ref)
        return ref

    def require_file(self, ref: FileRef):
        if not _confined_path(self.root, ref).is_file():
            raise _missing(self.root, ref)

    def text_lines(self, ref: FileRef) -> list[str]:
        try:
            text = _read_verified(self.root, ref).decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(f"bundle {self.root}: '{ref.file}' ({ref.field}) is not UTF-8 text") from None
        lines = text.splitlines()
        if not lines or any(not line.strip() for line in lines):
            raise BundleError(f"bundle {self.root}: '{ref.file}' ({ref.field}) must hold one non-empty entry per line")
        return [line.strip() for line in lines]

    def read_classes(self, ref: FileRef) -> list[list[str]]:
        return [[name.strip() for name in line.split(", ") if name.strip()] for line in self.text_lines(ref)]

    def read_vocabulary(self, ref: FileRef) -> list[str]:
        words = self.text_lines(ref)
        if words[0] != "<eos>":
            raise BundleError(f"bundle {self.root}: '{ref.file}' ({ref.field}) must have <eos> on its first line")
        return words

    def distribution(self, value, where: str, dim: int):
        if not isinstance(value, dict) or value.get("kind") not in ("gaussian", "gaussian_mixture"):
            self.fail(f"{where}.kind", 'must be "gaussian" or "gaussian_mixture"')
        if value["kind"] == "gaussian":
            self.obj(value, where, required={"kind", "mean", "std"})
            mean = self.number(value["mean"], f"{where}.mean", -math.inf, strict=False)
            std = self.number(value["std"], f"{where}.std", 0.0, strict=True)
            return GaussianPrior(dim=dim, mean=mean, std=std)
        self.obj(value, where, required={"kind", "file", "sha256", "components"})
        components = self.integer(value, "components", f"{where}.components", minimum=1)
        ref = self.file_ref({"file": value["file"], "sha256": value["sha256"]}, where)
        data = _read_verified(self.root, ref)
        arrays = _mixture_arrays(data)
        if isinstance(arrays, str):
            raise BundleError(
                f"bundle {self.root}: '{ref.file}' ({where}) is not a prior .npz with float arrays"
                f" weights, means, scale_tril ({arrays})"
            )
        problem = check_mixture_arrays(arrays["weights"], arrays["means"], arrays["scale_tril"], dim)
        if problem is None and len(arrays["weights"]) != components:
            problem = f"holds {len(arrays['weights'])} components, the manifest says {components}"
        if problem:
            raise BundleError(f"bundle {self.root}: '{ref.file}' ({where}): {problem}")
        return GaussianMixturePrior(**arrays)

    def clip(self, value, where: str = "latent.clip") -> tuple[float, float] | None:
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != 2:
            self.fail(where, "must be null or [lo, hi]")
        lo = self.number(value[0], f"{where}[0]", -math.inf, strict=False)
        hi = self.number(value[1], f"{where}[1]", -math.inf, strict=False)
        if not lo < hi:
            self.fail(where, "must have lo < hi")
        return (lo, hi)

    def preset(self, value, where: str) -> dict:
        """Partial sampler settings, plus an optional "clip" (null turns the bundle's clip off)."""
        if not isinstance(value, dict):
            self.fail(where, "must be an object")
        settings = self.sampler({key: item for key, item in value.items() if key != "clip"}, where, partial=True)
        if "clip" in value:
            settings["clip"] = self.clip(value["clip"], f"{where}.clip")
        return settings

    def sampler(self, value, where: str, partial: bool) -> dict:
        """Sampler settings (all of SAMPLER_KEYS' required ones unless `partial`), checked by SamplerConfig itself."""
        required = set() if partial else {"steps", "eps1", "eps2", "prior_weight"}
        value = self.obj(
            value if value is not None or partial else None, where, required=required, optional=set(SAMPLER_KEYS)
        )
        problem = sampler_settings_problem(value)
        if problem is not None:
            self.fail(f"{where}.{problem[0]}", problem[1])
        return {
            key: float(item) if isinstance(item, int) and key not in ("steps",) and not isinstance(item, bool) else item
            for key, item in value.items()
        }
