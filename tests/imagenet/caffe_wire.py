"""A small protobuf wire-format encoder that writes synthetic `.caffemodel` files for the tests.

Independent of the reader under test: it follows caffe.proto's field numbers directly.
"""

from __future__ import annotations

import struct

import numpy as np


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return varint(number << 3 | 0) + varint(value)


def blob(array: np.ndarray, style: str = "shape") -> bytes:
    """BlobProto. style: "shape" (BlobShape + packed float data), "legacy" (num/channels/height/width,
    a 2-d array padded to 4-d as old Caffe did), "double" (shape + double_data), "unpacked" (one fixed32 per value)."""
    array = np.asarray(array)
    if style == "legacy":
        dims = (1,) * (4 - array.ndim) + array.shape
        header = b"".join(varint_field(n, d) for n, d in zip((1, 2, 3, 4), dims))
        return header + length_field(5, array.astype("<f4").tobytes())
    shape = length_field(7, length_field(1, b"".join(varint(d) for d in array.shape)))
    if style == "double":
        return shape + length_field(8, array.astype("<f8").tobytes())
    if style == "unpacked":
        return shape + b"".join(varint(5 << 3 | 5) + struct.pack("<f", v) for v in array.ravel())
    return shape + length_field(5, array.astype("<f4").tobytes())


def caffemodel(layers: dict[str, list[np.ndarray]], version: str = "v2", blob_style: str = "shape") -> bytes:
    """NetParameter bytes. version: "v2" (layer = 100), "v1" (layers = 2), "v0" (layers = 2 nesting a V0 layer)."""
    out = length_field(1, b"synthetic")
    out += length_field(100, length_field(1, b"data") + length_field(2, b"Input"))  # a layer without blobs
    for name, blobs in layers.items():
        encoded = [blob(b, blob_style) for b in blobs]
        if version == "v2":
            body = (
                length_field(1, name.encode())
                + length_field(2, b"Layer")
                + b"".join(length_field(7, b) for b in encoded)
            )
            out += length_field(100, body)
        elif version == "v1":
            body = varint_field(5, 14) + length_field(4, name.encode()) + b"".join(length_field(6, b) for b in encoded)
            out += length_field(2, body)
        else:
            v0 = length_field(1, name.encode()) + b"".join(length_field(50, b) for b in encoded)
            out += length_field(2, length_field(1, v0))
    return out
