"""The generate request: its fields (made from GenerateOptions and SamplerConfig), its JSON schema, and
how a JSON body becomes a bundle's pipeline and a GenerateOptions.

The server checks only what the pipeline cannot (JSON syntax, field names, string types, the server's
limits); every value is then checked by the pipeline itself, so errors read as the CLI's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields

from ..pipeline import GenerateOptions, Pipeline
from ..sampler import SamplerConfig

# GenerateOptions fields a request cannot set: Python objects, and files on the server.
_NOT_REQUEST_FIELDS = {"sampler", "init_image", "callback", "init_z", "noise"}
OPTION_FIELDS = {f.name: f for f in fields(GenerateOptions) if f.name not in _NOT_REQUEST_FIELDS}
# Sampler settings with a command-line flag, so that the reproduce command in each PNG remakes it.
SAMPLER_REQUEST_FIELDS = {f.name: f for f in fields(SamplerConfig) if f.metadata["flag"] is not None}

OPTION_HELP = {
    "classes": 'Class spec: a name or index, or a mix such as "sneaker:0.7,sandal:0.3" (negative weights push away).',
    "caption": "A caption in the bundle's vocabulary (instead of classes).",
    "then": "The condition from step switch_at on: a class spec (class runs) or a caption (caption runs).",
    "switch_at": "The step at which `then` takes over (default: half the steps).",
    "n": "Number of images.",
    "seed": "Random seed (default: drawn, and returned).",
    "start_index": "Index of the first sample; sample i depends on the seed and i only.",
    "batch_size": "Chains run together (results do not depend on it).",
    "preset": "A named sampler preset of the bundle.",
    "path": "latent (the MLP gradient graph) or composite (through the generator and classifier).",
}
BUNDLE_HELP = "Name of one of the server's bundles (default: the first it was started with)."

_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


@dataclass(frozen=True)
class Limits:
    """The most work one request may ask for, and the largest body."""

    n: int = 64
    steps: int = 2000
    batch_size: int = 64
    body_bytes: int = 65536


def _is_string_field(spec) -> bool:
    return str(spec.type).split(" | ")[0] == "str"


def _field_schema(spec, description: str) -> dict:
    kinds = [_JSON_TYPES[kind] if kind != "None" else "null" for kind in str(spec.type).split(" | ")]
    schema = {"anyOf": [{"type": kind} for kind in kinds], "description": description}
    if spec.metadata.get("choices"):
        schema["anyOf"][0]["enum"] = list(spec.metadata["choices"])
    return schema


def request_schema() -> dict:
    """JSON schema of the generate request body (null or absent: the default)."""
    properties = {"bundle": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": BUNDLE_HELP}}
    properties.update({name: _field_schema(spec, OPTION_HELP[name]) for name, spec in OPTION_FIELDS.items()})
    properties.update(
        {
            name: _field_schema(spec, spec.metadata["help"] + " (default: the bundle's)")
            for name, spec in SAMPLER_REQUEST_FIELDS.items()
        }
    )
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "example": {"classes": "sneaker", "n": 1, "seed": 0},
    }


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_request(
    body: bytes, bundles: Mapping[str, Pipeline], limits: Limits
) -> tuple[Pipeline, GenerateOptions, SamplerConfig]:
    """The pipeline, options and sampler settings a JSON body asks for; RequestError (400 syntax, 422 names and
    values) or InputError (a value the pipeline refuses)."""
    try:
        data = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as error:
        raise RequestError(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "the body must be a JSON object of generate options")
    values = {key: value for key, value in data.items() if value is not None}
    known = ["bundle", *OPTION_FIELDS, *SAMPLER_REQUEST_FIELDS]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise RequestError(422, f"unknown option '{unknown[0]}' (known: {', '.join(known)})")
    specs = {**OPTION_FIELDS, **SAMPLER_REQUEST_FIELDS}
    for key, value in values.items():
        if (key == "bundle" or _is_string_field(specs[key])) and not isinstance(value, str):
            raise RequestError(422, f"{key} must be a string, not {json.dumps(value)}")
    pipe = pick_bundle(bundles, values.pop("bundle", None), 422)
    options = GenerateOptions(**{k: v for k, v in values.items() if k in OPTION_FIELDS}).updated(
        **{k: v for k, v in values.items() if k in SAMPLER_REQUEST_FIELDS}
    )
    config = pipe.sampler_config(options.preset, options.condition, **options.sampler)
    for name, value in (("n", options.n), ("batch_size", options.batch_size), ("steps", config.steps)):
        limit = getattr(limits, name)
        if isinstance(value, int) and value > limit:
            raise RequestError(422, f"{name} must be at most {limit} on this server, not {value}")
    return pipe, options, config


def pick_bundle(bundles: Mapping[str, Pipeline], name: str | None, status: int) -> Pipeline:
    """The pipeline of a bundle the server was started with (None: the first); RequestError otherwise."""
    if name is None:
        return next(iter(bundles.values()))
    if name not in bundles:
        raise RequestError(status, f"unknown bundle '{name}' (this server has: {', '.join(bundles)})")
    return bundles[name]
