"""Find ONNX external-data references in a serialized model, without the onnx package.

A graph loaded from bytes resolves external data against the current directory, so the runtime
refuses every graph that has any: this module walks the protobuf wire format along the paths
that can hold a TensorProto and reports the first external one.
"""

from __future__ import annotations

# message kind -> {field number: message kind of that (length-delimited) field}
_SCHEMA = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_DATA_LOCATION_EXTERNAL = 1


class MalformedModel(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedModel("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _fields(data: memoryview):
    """Yield (field_number, wire_type, value) where value is an int or a memoryview."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        else:
            raise MalformedModel(f"unsupported wire type {wire}")
        if pos > len(data):
            raise MalformedModel("truncated field")
        yield field, wire, value


def _has_external(data: memoryview, kind: str) -> bool:
    children = _SCHEMA[kind]
    for field, wire, value in _fields(data):
        if kind == "tensor":
            if field == _TENSOR_EXTERNAL_DATA and wire == 2:
                return True
            if field == _TENSOR_DATA_LOCATION and wire == 0 and value == _DATA_LOCATION_EXTERNAL:
                return True
        elif wire == 2 and field in children and _has_external(value, children[field]):
            return True
    return False


def uses_external_data(model_bytes: bytes) -> bool:
    """True when any tensor of the serialized ModelProto points to external data.

    Raises MalformedModel when the bytes are not a well-formed protobuf message.
    """
    return _has_external(memoryview(model_bytes), "model")


def op_types(model_bytes: bytes) -> set[str]:
    """The operator types of the main graph's nodes (not of subgraphs or functions) of a serialized ModelProto.

    Raises MalformedModel when the bytes are not a well-formed protobuf message.
    """
    found = set()
    for field, wire, graph in _fields(memoryview(model_bytes)):
        if field == 7 and wire == 2:  # ModelProto.graph
            for graph_field, graph_wire, node in _fields(graph):
                if graph_field == 1 and graph_wire == 2:  # GraphProto.node
                    found.update(
                        bytes(value).decode("utf-8", "replace") for f, w, value in _fields(node) if f == 4 and w == 2
                    )
    return found
