"""One conversion at the published sizes: synthetic .caffemodel files with the layer shapes stated in the
published prototxts load exactly into the width-1 networks, and the classifier graph exports at full size."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from caffe_wire import caffemodel

from export_tools.convert.imagenet_bundle import ImageNetSources, load_networks
from export_tools.export import export_classifier
from export_tools.specs import GraphDims

# Blob shapes of the published files (ppgn generator.prototxt, bvlc_reference_caffenet deploy.prototxt,
# lrcn_word_to_preds.deploy.prototxt); CaffeNet's fc blobs in the legacy 4-d form its caffemodel stores.
GENERATOR = {
    **{name: [(4096, 4096), (4096,)] for name in ("defc7", "defc6", "defc5")},
    "deconv5": [(256, 256, 4, 4), (256,)],
    "conv5_1": [(256, 512, 3, 3), (512,)],
    "deconv4": [(512, 256, 4, 4), (256,)],
    "conv4_1": [(256, 256, 3, 3), (256,)],
    "deconv3": [(256, 128, 4, 4), (128,)],
    "conv3_1": [(128, 128, 3, 3), (128,)],
    "deconv2": [(128, 64, 4, 4), (64,)],
    "deconv1": [(64, 32, 4, 4), (32,)],
    "deconv0": [(32, 3, 4, 4), (3,)],
}
CAFFENET = {
    "conv1": [(96, 3, 11, 11), (96,)],
    "conv2": [(256, 48, 5, 5), (256,)],
    "conv3": [(384, 256, 3, 3), (384,)],
    "conv4": [(384, 192, 3, 3), (384,)],
    "conv5": [(256, 192, 3, 3), (256,)],
    "fc6": [(1, 1, 4096, 9216), (1, 1, 1, 4096)],
    "fc7": [(1, 1, 4096, 4096), (1, 1, 1, 4096)],
    "fc8": [(1, 1, 1000, 4096), (1, 1, 1, 1000)],
}
LRCN = {
    "fc7": [(4096, 4096), (4096,)],
    "fc8": [(1000, 4096), (1000,)],
    "embedding": [(8801, 1000)],
    "lstm1": [(4000, 1000), (4000,), (4000, 1000)],
    "lstm2": [(4000, 1000), (4000,), (4000, 1000), (4000, 1000)],
    "predict": [(8801, 1000), (8801,)],
}


def _random_blobs(shapes: dict, seed: int) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        name: [rng.random(shape, dtype=np.float32) - 0.5 for shape in blob_shapes]
        for name, blob_shapes in shapes.items()
    }


@pytest.mark.slow
def test_published_shapes_convert_exactly(tmp_path):
    files = {}
    for key, shapes, version, seed in (
        ("generator", GENERATOR, "v2", 0),
        ("classifier", CAFFENET, "v1", 1),
        ("captioner", LRCN, "v2", 2),
    ):
        files[key] = tmp_path / f"{key}.caffemodel"
        files[key].write_bytes(caffemodel(_random_blobs(shapes, seed), version))
    (tmp_path / "vocabulary.txt").write_text("\n".join(f"w{i}" for i in range(8800)) + "\n")
    nets = load_networks(
        ImageNetSources(files["generator"], files["classifier"], files["captioner"], tmp_path / "vocabulary.txt")
    )

    for net, shapes, seed in ((nets.generator, GENERATOR, 0), (nets.captioner, LRCN, 2)):
        expected = _random_blobs(shapes, seed)
        for name, params in net.caffe_layers().items():
            for param, blob in zip(params, expected[name], strict=True):
                assert torch.equal(param.detach(), torch.from_numpy(blob)), name
    expected = _random_blobs(CAFFENET, 1)
    for name, params in {**nets.encoder.caffe_layers(), **nets.head.caffe_layers()}.items():
        for param, blob in zip(params, expected[name], strict=True):
            assert torch.equal(param.detach(), torch.from_numpy(blob).reshape(param.shape)), name
    assert len(nets.vocabulary) == 8801 and nets.vocabulary[0] == "<eos>"

    report = export_classifier(nets.head, GraphDims(latent_dim=4096, num_classes=1000), tmp_path / "classifier.onnx")
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    z = np.random.default_rng(3).random((2, 4096), dtype=np.float32) * 5
    with torch.no_grad():
        want = nets.head(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(session.run(None, {"z": z})[0], want, rtol=0, atol=1e-5 * np.abs(want).max())
