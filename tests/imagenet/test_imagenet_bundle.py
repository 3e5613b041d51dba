"""End to end with random weights of the published architectures (narrowed 16x for speed):
weights files -> `latent-onnx-export imagenet convert` -> bundle -> `latent-onnx generate`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from caffe_wire import caffemodel
from PIL import Image

from export_tools.cli import main as export_main
from export_tools.convert.imagenet_bundle import ImageNetOptions, ImageNetSources, imagenet_spec
from export_tools.nets.caffenet import CaffeNetEncoder, CaffeNetHead
from export_tools.nets.deepsim import DEEPSIM_CONVENTION, DeePSiMGenerator
from export_tools.nets.lrcn import LRCNCaptioner
from latent_onnx.cli import main as runtime_main

WIDTH = 16
TOKENS = 8  # caption length (words + <eos>) of the test bundle; the default, LRCN's, is 20
WORDS = ["<unk>", "a", "red", "bird", "on", "branch", "the", "yellow", "small", "sitting", ".", ","]


def _blobs(*nets) -> dict[str, list[np.ndarray]]:
    return {name: [p.detach().numpy() for p in params] for net in nets for name, params in net.caffe_layers().items()}


def _run(main, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Random-weight reference networks, their weights files, and the bundle converted from those files."""
    torch.manual_seed(0)
    nets = {
        "generator": DeePSiMGenerator(WIDTH),
        "encoder": CaffeNetEncoder(WIDTH),
        "head": CaffeNetHead(WIDTH),
        "captioner": LRCNCaptioner(CaffeNetHead(WIDTH), vocabulary=len(WORDS) + 1, width=WIDTH),
    }
    for net in nets.values():
        for param in net.parameters():  # LRCN's zero biases would hide a bias mix-up
            torch.nn.init.normal_(param, std=0.05)
    root = tmp_path_factory.mktemp("imagenet")
    files = {
        "generator": root / "generator.caffemodel",
        "classifier": root / "bvlc_reference_caffenet.caffemodel",
        "captioner": root / "lrcn_caffenet_iter_110000.caffemodel",
        "vocabulary": root / "vocabulary.txt",
    }
    files["generator"].write_bytes(caffemodel(_blobs(nets["generator"])))
    files["classifier"].write_bytes(caffemodel(_blobs(nets["encoder"], nets["head"]), "v1", "legacy"))
    files["captioner"].write_bytes(caffemodel(_blobs(nets["captioner"])))
    files["vocabulary"].write_text("\n".join(WORDS) + "\n")
    bundle = root / "bundle"
    _run(
        export_main,
        ["imagenet", "convert", str(bundle), "--cache", str(root), "--width", str(WIDTH), "--max-tokens", str(TOKENS)],
    )
    return nets, files, bundle


def _session(bundle, role):
    return ort.InferenceSession(str(bundle / f"{role}.onnx"), providers=["CPUExecutionProvider"])


def test_converted_graphs_reproduce_the_reference_networks(reference):
    nets, _, bundle = reference
    rng = np.random.default_rng(1)
    z = np.clip(rng.standard_normal((3, 256)), 0, 30).astype(np.float32)
    with torch.no_grad():
        logits = nets["head"](torch.from_numpy(z)).numpy()
        image = DEEPSIM_CONVENTION.to_pixels(nets["generator"](torch.from_numpy(z)), (256, 256)).numpy()
    np.testing.assert_allclose(_session(bundle, "classifier").run(None, {"z": z})[0], logits, rtol=1e-4, atol=1e-5)
    got_image = _session(bundle, "generator").run(None, {"z": z})[0]
    assert got_image.shape == (3, 256, 256, 3)
    assert np.abs(got_image.astype(int) - image).max() <= 1 and (got_image != image).mean() < 1e-3

    tokens = np.pad(np.array([[2, 3, 4, 0], [5, 0, 0, 0], [1, 6, 7, 8]], dtype=np.int64), ((0, 0), (0, TOKENS - 4)))
    mask = (np.arange(TOKENS)[None] <= np.array([[3], [1], [4]])).astype(np.float32)
    z_t = torch.from_numpy(z).requires_grad_(True)
    logp = nets["captioner"](z_t, torch.from_numpy(tokens), torch.from_numpy(mask))
    (grad,) = torch.autograd.grad(logp.sum(), z_t)
    got_logp, got_grad = _session(bundle, "caption_grad").run(None, {"z": z, "tokens": tokens, "mask": mask})
    np.testing.assert_allclose(got_logp, logp.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_grad, grad.numpy(), rtol=1e-3, atol=1e-5)

    with torch.no_grad():
        code = nets["encoder"](DEEPSIM_CONVENTION.from_pixels(torch.from_numpy(image))).numpy()
    np.testing.assert_allclose(_session(bundle, "encoder").run(None, {"image": image})[0], code, rtol=1e-3, atol=1e-4)


def test_manifest_has_the_paper_preset_clip_classes_and_vocabulary(reference):
    _, files, bundle = reference
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["presets"]["paper"] == {
        "eps1": 1e-3,
        "eps2": 1e-8,
        "prior_weight": 0.0,
        "eps1_final": None,
        "normalize_grad": False,
        "clip": None,
    }  # the paper did not clip
    assert manifest["sampler"]["normalize_grad"] is True and manifest["sampler"]["eps1"] == 1.0  # PPGN's step
    assert manifest["latent"]["clip"] == [0.0, 30.0] and manifest["latent"]["prior"]["std"] == 1.0
    assert manifest["image"]["height"] == 256
    classes = (bundle / "classes.txt").read_text().splitlines()
    assert len(classes) == 1000 and classes[11] == "goldfinch, Carduelis carduelis"
    assert (bundle / "vocab.txt").read_text().splitlines() == ["<eos>"] + WORDS
    assert manifest["provenance"]["sources"]["generator"]["file"] == files["generator"].name


def test_generate_goldfinch_and_a_caption_end_to_end(reference, tmp_path):
    _, _, bundle = reference
    for condition in (
        ["--class", "goldfinch"],
        ["--caption", "a red bird on a branch."],
        ["--class", "11", "--preset", "paper"],
    ):
        out = tmp_path / condition[1].replace(" ", "_")
        _run(
            runtime_main,
            [
                "generate",
                "--bundle",
                str(bundle),
                *condition,
                "-n",
                "2",
                "--steps",
                "3",
                "--seed",
                "5",
                "--out",
                str(out),
                "--json",
            ],
        )
        images = sorted(out.glob("*.png"))
        assert len(images) == 2
        assert Image.open(images[0]).size == (256, 256)
    start = tmp_path / "from_image"  # through the encoder graph
    _run(
        runtime_main,
        [
            "generate",
            "--bundle",
            str(bundle),
            "--class",
            "goldfinch",
            "--init-image",
            str(images[0]),
            "-n",
            "1",
            "--steps",
            "2",
            "--seed",
            "5",
            "--out",
            str(start),
            "--json",
        ],
    )
    assert len(list(start.glob("*.png"))) == 1


@pytest.mark.slow  # about 60 s: the composite gradient runs the 256x256 generator and CaffeNet
def test_composite_path_exports_and_samples(reference, tmp_path):
    _, files, _ = reference
    bundle = tmp_path / "composite"
    _run(
        export_main,
        [
            "imagenet",
            "convert",
            str(bundle),
            "--generator",
            str(files["generator"]),
            "--classifier",
            str(files["classifier"]),
            "--composite",
            "--no-encoder",
            "--crop",
            "--width",
            str(WIDTH),
        ],
    )
    _run(
        runtime_main,
        [
            "generate",
            "--bundle",
            str(bundle),
            "--class",
            "goldfinch",
            "--path",
            "composite",
            "-n",
            "1",
            "--steps",
            "2",
            "--seed",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    (image,) = (tmp_path / "out").glob("*.png")
    assert Image.open(image).size == (227, 227)


def test_int8_conversion_quantises_class_grad_and_generates(reference, tmp_path):
    _, files, _ = reference
    bundle = tmp_path / "int8"
    _run(
        export_main,
        [
            "imagenet",
            "convert",
            str(bundle),
            "--generator",
            str(files["generator"]),
            "--classifier",
            str(files["classifier"]),
            "--no-encoder",
            "--precision",
            "int8",
            "--width",
            str(WIDTH),
        ],
    )
    precision = json.loads((bundle / "manifest.json").read_text())["provenance"]["precision"]["class_grad"]
    assert precision["weights"] == "int8" and precision["grad_cosine_median"] >= 0.99
    assert "MatMulInteger" in {node.op_type for node in onnx.load(bundle / "class_grad.onnx").graph.node}
    _run(
        runtime_main,
        [
            "generate",
            "--bundle",
            str(bundle),
            "--class",
            "goldfinch",
            "-n",
            "2",
            "--steps",
            "3",
            "--seed",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_cropped_bundle_declares_227_and_the_crop(reference):
    _, files, _ = reference
    sources = ImageNetSources(files["generator"], files["classifier"])
    spec = imagenet_spec(sources, ImageNetOptions(crop=True, clip=None, width=WIDTH))
    assert spec.image_hw == (227, 227) and spec.generator_convention.crop == (14, 14) and spec.clip is None
    assert spec.captioner is None and spec.vocabulary is None


def test_weights_of_the_wrong_architecture_are_refused_and_nothing_is_written(reference, tmp_path, capsys):
    _, files, _ = reference
    out = tmp_path / "full-size"
    with pytest.raises(SystemExit) as exit_info:  # narrow weights given to the published (width 1) networks
        export_main(
            [
                "imagenet",
                "convert",
                str(out),
                "--generator",
                str(files["generator"]),
                "--classifier",
                str(files["classifier"]),
            ]
        )
    assert exit_info.value.code == 6
    assert (
        "layer defc7 blob 0 has shape (256, 256), the DeePSiMGenerator expects (4096, 4096)" in capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []
