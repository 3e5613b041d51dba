"""The bundle contract, declared once: format name and versions, the bundle name rule, and every graph role's
tensors (docs/bundle-format.md, "Graph contracts", is tested against this table).

The runtime checks graphs against it (`sessions.GraphRunner`) and reads manifests by it (`bundle`); the
exporter builds its specs from it (`export_tools.specs`) and adds only what export needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMAT = "latent-onnx-bundle"
FORMAT_VERSION = 3  # written by this version's exporter
# read; version 2 added the sampler keys method and anneal, version 3 the sampler settings by condition
FORMAT_VERSIONS = (1, 2, 3)
CONDITIONS = ("class", "caption")  # the kinds of condition a request names (manifest `sampler_by_condition` keys)
NAME_RULE = "[a-z0-9][a-z0-9._-]*"  # a bundle's name (manifest `name`)
NAME_PATTERN = re.compile(NAME_RULE + r"\Z")

BATCH = "B"  # the dynamic batch axis; exported graphs name it BATCH_AXIS
BATCH_AXIS = "batch"
# Other dimension symbols: D = latent.dim, K = classes, T = caption.max_tokens, H, W = image.height, image.width.


@dataclass(frozen=True)
class Tensor:
    """One input or output of a graph."""

    name: str  # exact ONNX name
    dtype: str  # numpy dtype name: "float32", "int64" or "uint8"
    dims: tuple[str | int, ...]  # BATCH first; other strings are dimension symbols; ints are fixed sizes


@dataclass(frozen=True)
class GraphContract:
    """What a graph of one role takes and returns, in order."""

    role: str  # manifest key (graphs.<role>) and file stem
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


_Z = Tensor("z", "float32", (BATCH, "D"))
_WEIGHTS = Tensor("weights", "float32", (BATCH, "K"))
_IMAGE = Tensor("image", "uint8", (BATCH, "H", "W", 3))
_LOGP_GRAD = (Tensor("logp", "float32", (BATCH,)), Tensor("grad", "float32", (BATCH, "D")))

CONTRACTS: dict[str, GraphContract] = {
    contract.role: contract
    for contract in (
        GraphContract("generator", (_Z,), (_IMAGE,)),
        GraphContract("classifier", (_Z,), (Tensor("logits", "float32", (BATCH, "K")),)),
        GraphContract("class_grad", (_Z, _WEIGHTS), _LOGP_GRAD),
        GraphContract(
            "caption_grad",
            (_Z, Tensor("tokens", "int64", (BATCH, "T")), Tensor("mask", "float32", (BATCH, "T"))),
            _LOGP_GRAD,
        ),
        GraphContract("encoder", (_IMAGE,), (_Z,)),
        GraphContract("composite_class_grad", (_Z, _WEIGHTS), _LOGP_GRAD),
    )
}
ROLES: tuple[str, ...] = tuple(CONTRACTS)  # manifest order; `generator` is the one required role
