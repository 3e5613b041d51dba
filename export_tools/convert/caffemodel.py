"""Read the weights of a Caffe `.caffemodel` without Caffe or protobuf code generation.

A `.caffemodel` is a serialised `caffe.NetParameter` (caffe/src/caffe/proto/caffe.proto). Only
the fields that carry weights are decoded; every other field is skipped by its wire type:

    NetParameter      layer = 100 (LayerParameter, V2)   layers = 2 (V1LayerParameter)
    LayerParameter    name = 1   blobs = 7
    V1LayerParameter  name = 4   blobs = 6   layer = 1 (V0LayerParameter: name = 1, blobs = 50)
    BlobProto         shape = 7 (BlobShape: dim = 1, int64)   data = 5 (float)   double_data = 8
                      legacy num = 1, channels = 2, height = 3, width = 4
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from export_tools import ExportError

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5

# (name field, blobs field) of each layer message; V1 may nest its V0 layer in field 1.
_V2_LAYER = (1, 7)
_V1_LAYER = (4, 6)
_V0_LAYER = (1, 50)


class _Truncated(Exception):
    """A field runs past the end of its message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Decode the varint at `pos`; return (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise _Truncated
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview):
    """Yield (field number, wire type, value) of one message; value is an int or a memoryview."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            value, pos = buf[pos : pos + size], pos + size
        elif wire == _LENGTH:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise _Truncated
        yield number, wire, value


def _blob(buf: memoryview) -> np.ndarray:
    """BlobProto -> float32 array of its declared shape."""
    shape: list[int] = []
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}
    chunks: list[np.ndarray] = []
    for number, wire, value in _fields(buf):
        if number == 7 and wire == _LENGTH:
            for dim_number, dim_wire, dim in _fields(value):
                if dim_number != 1:
                    continue
                if dim_wire == _LENGTH:  # packed dims
                    pos = 0
                    while pos < len(dim):
                        size, pos = _varint(dim, pos)
                        shape.append(size)
                else:
                    shape.append(dim)
        elif number in legacy and wire == _VARINT:
            legacy[number] = value
        elif number == 5:  # float data, packed (length) or one fixed32 per element
            chunks.append(np.frombuffer(value, dtype="<f4"))
        elif number == 8:  # double data
            chunks.append(np.frombuffer(value, dtype="<f8").astype(np.float32))
    data = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if not shape:
        shape = [legacy[k] for k in (1, 2, 3, 4)] if any(legacy.values()) else [data.size]
    if math.prod(shape) != data.size:
        raise ValueError(f"a blob declares shape {tuple(shape)} but holds {data.size} values")
    return data.reshape(shape)


def _layer(buf: memoryview, fields: tuple[int, int]) -> tuple[str, list[np.ndarray], memoryview | None]:
    """(name, blobs, nested V0 layer or None) of one layer message."""
    name_field, blobs_field = fields
    name, blobs, nested = "", [], None
    for number, wire, value in _fields(buf):
        if wire != _LENGTH:
            continue
        if number == name_field:
            name = bytes(value).decode("utf-8", errors="replace")
        elif number == blobs_field:
            blobs.append(_blob(value))
        elif fields == _V1_LAYER and number == 1:
            nested = value
    return name, blobs, nested


def parse_caffemodel(data: bytes, source: str) -> dict[str, list[np.ndarray]]:
    """Serialised NetParameter -> {layer name: [blob float32 arrays, in Caffe's order]}; layers without blobs are left out."""
    layers: dict[str, list[np.ndarray]] = {}
    try:
        for number, wire, value in _fields(memoryview(data)):
            if wire != _LENGTH or number not in (2, 100):
                continue
            name, blobs, nested = _layer(value, _V2_LAYER if number == 100 else _V1_LAYER)
            if nested is not None and not blobs:
                name, blobs, _ = _layer(nested, _V0_LAYER)
            if blobs:
                layers[name] = blobs
    except _Truncated:
        raise ExportError(
            f"{source}: the file ends in the middle of a record (truncated download?): download it again"
        ) from None
    except ValueError as error:
        raise ExportError(f"{source}: not a readable .caffemodel ({error})") from None
    if not layers:
        raise ExportError(f"{source}: holds no layer weights: is it a .caffemodel (not a .prototxt)?")
    return layers


def read_caffemodel(path: Path) -> dict[str, list[np.ndarray]]:
    """Read a .caffemodel file: {layer name: [blobs]} (see parse_caffemodel)."""
    return parse_caffemodel(Path(path).read_bytes(), str(path))
