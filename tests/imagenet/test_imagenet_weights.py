"""The .caffemodel reader and weight loading: synthetic files written by the tests convert back to the same tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from caffe_wire import caffemodel

from export_tools import ExportError
from export_tools.convert.caffemodel import parse_caffemodel
from export_tools.convert.weights import load_caffe_weights, read_weights
from export_tools.nets.caffenet import CaffeNetHead
from export_tools.nets.deepsim import DeePSiMGenerator

RNG = np.random.default_rng(0)
LAYERS = {
    "conv1": [RNG.standard_normal((4, 3, 2, 2)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)],
    "fc6": [RNG.standard_normal((5, 7)).astype(np.float32), RNG.standard_normal(5).astype(np.float32)],
    "embedding": [RNG.standard_normal((9, 3)).astype(np.float32)],
}


@pytest.mark.parametrize("version", ["v2", "v1", "v0"])
@pytest.mark.parametrize("style", ["shape", "double", "unpacked"])
def test_caffemodel_round_trip(version, style):
    layers = parse_caffemodel(caffemodel(LAYERS, version, style), "synthetic")
    assert list(layers) == list(LAYERS)  # the blob-less "data" layer is left out
    for name, blobs in LAYERS.items():
        assert [b.shape for b in layers[name]] == [b.shape for b in blobs]
        for got, want in zip(layers[name], blobs):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == np.float32


def test_legacy_4d_shapes_load_into_2d_parameters():
    head = CaffeNetHead(width=16)
    blobs = {name: [p.detach().numpy() + 1.0 for p in params] for name, params in head.caffe_layers().items()}
    layers = parse_caffemodel(caffemodel(blobs, "v1", "legacy"), "legacy")
    assert layers["fc7"][0].shape == (1, 1, 256, 256) and layers["fc7"][1].shape == (1, 1, 1, 256)
    load_caffe_weights(head, layers, "legacy")
    np.testing.assert_array_equal(head.fc8.bias.detach().numpy(), blobs["fc8"][1])


def test_truncated_caffemodel_is_refused():
    data = caffemodel(LAYERS)
    with pytest.raises(ExportError, match="truncated download"):
        parse_caffemodel(data[: len(data) - 10], "cut.caffemodel")
    with pytest.raises(ExportError, match="deploy.prototxt: not a readable .caffemodel"):
        parse_caffemodel(b"name: 'a prototxt'\n", "deploy.prototxt")
    with pytest.raises(ExportError, match="holds no layer weights"):
        parse_caffemodel(caffemodel({}), "empty.caffemodel")


def test_wrong_architecture_names_the_layer_and_shapes():
    head = CaffeNetHead(width=16)
    blobs = {name: [p.detach().numpy() for p in params] for name, params in head.caffe_layers().items()}
    blobs["fc7"][0] = np.zeros((256, 255), np.float32)
    with pytest.raises(
        ExportError, match=r"layer fc7 blob 0 has shape \(256, 255\), the CaffeNetHead expects \(256, 256\)"
    ):
        load_caffe_weights(head, blobs, "w.caffemodel")
    with pytest.raises(ExportError, match="layer defc7 is missing"):
        load_caffe_weights(DeePSiMGenerator(width=16), blobs, "caffenet.caffemodel")


def test_state_dict_port_and_caffemodel_give_the_same_generator(tmp_path):
    torch.manual_seed(0)
    reference = DeePSiMGenerator(width=16)
    # A port's state dict: nn.Sequential named after the Caffe layers, saved under the "G." prefix.
    state = {
        f"G.{name}.{kind}": p.detach().clone()
        for name, params in reference.caffe_layers().items()
        for kind, p in zip(("weight", "bias"), params)
    }
    torch.save(state, tmp_path / "upconvGAN_fc6.pt")
    (tmp_path / "generator.caffemodel").write_bytes(
        caffemodel({n: [p.detach().numpy() for p in ps] for n, ps in reference.caffe_layers().items()})
    )
    z = torch.randn(2, reference.code_dim)
    for file in ("upconvGAN_fc6.pt", "generator.caffemodel"):
        converted = DeePSiMGenerator(width=16)
        load_caffe_weights(converted, read_weights(tmp_path / file), file)
        torch.testing.assert_close(converted(z), reference(z), rtol=0, atol=0)


def test_unreadable_weights_files_are_refused(tmp_path):
    with pytest.raises(ExportError, match="does not exist: download it first"):
        read_weights(tmp_path / "absent.caffemodel")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ExportError, match="is not a state dict"):
        read_weights(tmp_path / "list.pt")
    torch.save({"fc7.weight": torch.zeros(64, 64)}, tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="cut.pt: not a readable PyTorch state dict .*download it again"):
        read_weights(tmp_path / "cut.pt")
