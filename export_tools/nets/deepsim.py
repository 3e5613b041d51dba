"""The DeePSiM "fc6" generator (Dosovitskiy & Brox 2016), layer for layer as published.

Layer names, sizes and the LeakyReLU(0.3) after every layer but the last follow the Caffe
definition `generator.prototxt` of Evolving-AI-Lab/ppgn (nets/generator/noiseless) and
Evolving-AI-Lab/synthesizing (nets/upconv/fc6). Every `conv*_1` is a Caffe "Deconvolution" with
stride 1, so all eight image layers are `nn.ConvTranspose2d`, whose weight layout
[in, out, kh, kw] is Caffe's deconvolution blob layout.
"""

from __future__ import annotations

import torch
from torch import nn

from export_tools.conventions import PixelConvention

CODE_DIM = 4096  # fc6 of CaffeNet: the generator's input
IMAGE_SIZE = 256  # the generator's output is 256 x 256
CAFFENET_CROP = (14, 14)  # (top, left) of the centred 227 x 227 window CaffeNet sees
LEAKY_SLOPE = 0.3
TEST_WIDTHS = (1, 2, 4, 8, 16)  # allowed width divisors: 1 is the published network

# The generator's output: BGR, ImageNet mean (B 104, G 117, R 123) subtracted, 0-255 scale.
DEEPSIM_CONVENTION = PixelConvention(scale=1.0, mean=(104.0, 117.0, 123.0), channel_order="BGR")

# (Caffe layer name, in features, out features) of the fully connected layers.
_FULLY_CONNECTED = (("defc7", 4096, 4096), ("defc6", 4096, 4096), ("defc5", 4096, 4096))
# (Caffe layer name, in channels, out channels, kernel, stride) of the deconvolutions; all pad 1.
_DECONVOLUTIONS = (
    ("deconv5", 256, 256, 4, 2),
    ("conv5_1", 256, 512, 3, 1),
    ("deconv4", 512, 256, 4, 2),
    ("conv4_1", 256, 256, 3, 1),
    ("deconv3", 256, 128, 4, 2),
    ("conv3_1", 128, 128, 3, 1),
    ("deconv2", 128, 64, 4, 2),
    ("deconv1", 64, 32, 4, 2),
    ("deconv0", 32, 3, 4, 2),
)


def check_width(width: int, net: str) -> None:
    """Refuse a width divisor outside TEST_WIDTHS."""
    if width not in TEST_WIDTHS:
        raise ValueError(f"{net} width must be one of {TEST_WIDTHS}, got {width}")


def layers_of(module: nn.Module, names) -> dict[str, list[torch.Tensor]]:
    """Caffe layer name -> [weight, bias] of the submodule of that name, Caffe's blob order."""
    return {n: [getattr(module, n).weight, getattr(module, n).bias] for n in names}


def narrow(features: int, width: int) -> int:
    """`features` divided by the test width divisor; the 3 image channels are never narrowed."""
    return features if features == 3 else features // width


class DeePSiMGenerator(nn.Module):
    """fc6 code z [B, D] float32 -> image x [B, 3, 256, 256] float32 in DEEPSIM_CONVENTION.

    `width` divides every layer's width (D = 4096 / width); 1 is the published network, larger
    powers of two give the same architecture in miniature for fast tests.
    """

    def __init__(self, width: int = 1) -> None:
        super().__init__()
        check_width(width, "DeePSiMGenerator")
        self.code_dim = CODE_DIM // width
        for name, fan_in, fan_out in _FULLY_CONNECTED:
            self.add_module(name, nn.Linear(narrow(fan_in, width), narrow(fan_out, width)))
        for name, fan_in, fan_out, kernel, stride in _DECONVOLUTIONS:
            self.add_module(
                name,
                nn.ConvTranspose2d(narrow(fan_in, width), narrow(fan_out, width), kernel, stride=stride, padding=1),
            )
        self.seed_channels = narrow(256, width)  # defc5 is reshaped to [B, 256, 4, 4]

    def caffe_layers(self) -> dict[str, list[torch.Tensor]]:
        """Caffe layer name -> this module's parameters in Caffe's blob order (weight, bias)."""
        return layers_of(self, [n for n, *_ in _FULLY_CONNECTED] + [n for n, *_ in _DECONVOLUTIONS])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for name, *_ in _FULLY_CONNECTED:
            h = nn.functional.leaky_relu(getattr(self, name)(h), LEAKY_SLOPE)
        h = h.reshape(-1, self.seed_channels, 4, 4)
        for name, *_ in _DECONVOLUTIONS[:-1]:
            h = nn.functional.leaky_relu(getattr(self, name)(h), LEAKY_SLOPE)
        return self.deconv0(h)
