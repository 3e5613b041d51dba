"""docs/bundle-format.md states the contract that latent_onnx/contracts.py declares: the graph table and the format version."""

from __future__ import annotations

import re
from pathlib import Path

from latent_onnx.contracts import BATCH, CONTRACTS, FORMAT, FORMAT_VERSION, ROLES

DOC = Path(__file__).resolve().parents[2] / "docs" / "bundle-format.md"
TENSOR = re.compile(r"`(\w+) \[([^\]]*)\](?: (\w+))?`")  # `name [B, D]` or `name [B, T] int64`


def documented_graphs() -> dict[str, tuple[list, list]]:
    """role -> (inputs, outputs) of the "Graph contracts" table, each tensor as (name, dtype, dims)."""
    section = DOC.read_text().split("## Graph contracts", 1)[1]
    graphs = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("role", "") or set(cells[0]) <= {"-"}:
            continue
        graphs[cells[0]] = tuple(
            [
                (name, dtype or "float32", tuple(int(d) if d.isdigit() else d for d in dims.split(", ")))
                for name, dims, dtype in TENSOR.findall(cell)
            ]
            for cell in cells[1:]
        )
    return graphs


def test_the_graph_table_is_the_declared_contract():
    declared = {
        role: tuple([(t.name, t.dtype, t.dims) for t in tensors] for tensors in (c.inputs, c.outputs))
        for role, c in CONTRACTS.items()
    }
    documented = documented_graphs()
    assert list(documented) == list(ROLES)
    assert documented == declared
    assert all(t.dims[0] == BATCH for c in CONTRACTS.values() for t in (*c.inputs, *c.outputs))


def test_the_page_names_the_written_format_version():
    text = DOC.read_text()
    assert text.startswith(f"# Bundle format, version {FORMAT_VERSION}\n")
    assert f'"format": "{FORMAT}",\n  "format_version": {FORMAT_VERSION},' in text
