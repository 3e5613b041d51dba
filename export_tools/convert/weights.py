"""Load published weights into the network definitions, checking every layer's shapes.

Weights come as {Caffe layer name: [blobs]}, from either
- a Caffe `.caffemodel` (export_tools.convert.caffemodel), or
- a PyTorch state dict that keeps Caffe's layer names, such as the `upconvGAN_fc6.pt` and
  `caffenet.pt` ports: keys `<layer>.weight` / `<layer>.bias`, optionally under a prefix
  (`G.`, `module.`, `model.`, `net.`) and with the `.1.` infix some ports carry.
The networks say which layers they need (`caffe_layers()`); other layers in a file are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from export_tools import ExportError
from export_tools.convert.caffemodel import read_caffemodel

_PREFIXES = ("module.", "G.", "model.", "net.")
_STATE_DICT_MAGIC = (b"PK\x03\x04", b"\x80")  # starts of torch.save files: zip archive, legacy pickle


def _caffe_key(key: str) -> tuple[str, str]:
    """State-dict key -> (Caffe layer name, "weight" | "bias" | other parameter name)."""
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    key = key.replace(".1.", ".")
    layer, _, kind = key.rpartition(".")
    return layer, kind


def read_state_dict(path: Path) -> dict[str, list[np.ndarray]]:
    """A PyTorch state dict with Caffe layer names -> {layer: [weight, bias]} float32 arrays."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise ExportError(
            f"{path}: not a readable PyTorch state dict ({type(error).__name__}): download it again"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{path}: is not a state dict (a mapping of parameter names to tensors)")
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in state.items():
        layer, kind = _caffe_key(key)
        parts.setdefault(layer, {})[kind] = tensor.detach().to(torch.float32).numpy()
    return {layer: [p[k] for k in ("weight", "bias") if k in p] for layer, p in parts.items()}


def read_weights(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Blobs per Caffe layer name from a `.caffemodel` or a PyTorch state dict, told apart by content."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(
            f"weights file {path} does not exist: download it first (`latent-onnx-export imagenet download`)"
        )
    with path.open("rb") as handle:
        start = handle.read(4)
    if start.startswith(_STATE_DICT_MAGIC):
        return read_state_dict(path)
    return read_caffemodel(path)


def _matching_shape(blob_shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Drop the leading 1s of Caffe's legacy 4-d shapes (fc weight [1, 1, out, in], bias [1, 1, 1, out])."""
    shape = tuple(blob_shape)
    while len(shape) > ndim and shape[0] == 1:
        shape = shape[1:]
    return shape


def load_caffe_weights(net: nn.Module, blobs: dict[str, list[np.ndarray]], source: str) -> None:
    """Copy `blobs` into `net` (which has `caffe_layers()`); refuse any missing layer or shape mismatch."""
    needed = net.caffe_layers()
    missing = [name for name in needed if name not in blobs]
    if missing:
        found = ", ".join(sorted(blobs)[:12]) or "none"
        raise ExportError(
            f"{source}: layer {missing[0]} is missing ({len(missing)} of {len(needed)} layers the "
            f"{type(net).__name__} needs are absent; the file has: {found}): is it the right file?"
        )
    for name, params in needed.items():
        found_blobs = blobs[name]
        if len(found_blobs) != len(params):
            raise ExportError(
                f"{source}: layer {name} has {len(found_blobs)} blobs, the {type(net).__name__} expects {len(params)}"
            )
        for index, (blob, param) in enumerate(zip(found_blobs, params)):
            if _matching_shape(blob.shape, param.ndim) != tuple(param.shape):
                raise ExportError(
                    f"{source}: layer {name} blob {index} has shape {tuple(blob.shape)}, the "
                    f"{type(net).__name__} expects {tuple(param.shape)}: wrong architecture or file"
                )
    with torch.no_grad():
        for name, params in needed.items():
            for blob, param in zip(blobs[name], params):
                param.copy_(torch.from_numpy(np.ascontiguousarray(blob, dtype=np.float32)).reshape(param.shape))
