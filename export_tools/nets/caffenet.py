"""CaffeNet (bvlc_reference_caffenet), split where the paper splits it.

Follows the Caffe deploy definition (BVLC caffe models/bvlc_reference_caffenet/deploy.prototxt,
as used by Evolving-AI-Lab/ppgn nets/caffenet/caffenet.prototxt): grouped convolutions (conv2,
conv4, conv5 in two groups), max pooling 3x3 stride 2 with Caffe's ceil rounding, and local
response normalisation (5 channels, alpha 1e-4, beta 0.75, k 1) *after* pooling. relu6 runs in
place in Caffe, so the fc6 code that DeePSiM inverts, and that the sampler moves, is post-ReLU.

- `CaffeNetEncoder`: image -> fc6 code (conv1 ... fc6, relu6): the encoder E.
- `CaffeNetHead`: fc6 code -> logits (relu, fc7, relu, fc8): the paper's MLP C.
- `CaffeNetClassifier`: image -> logits, E then C: the full classifier of the composite path.
Input images are BGR, mean-subtracted, 0-255 (deepsim.DEEPSIM_CONVENTION), at least 227 x 227.
"""

from __future__ import annotations

import torch
from torch import nn

from export_tools.nets.deepsim import check_width, layers_of, narrow

CLASSES = 1000
INPUT_SIZE = 227  # CaffeNet's input window; larger images are centre-cropped to it

# (Caffe layer name, in channels, out channels, kernel, stride, pad, groups)
_CONVOLUTIONS = (
    ("conv1", 3, 96, 11, 4, 0, 1),
    ("conv2", 96, 256, 5, 1, 2, 2),
    ("conv3", 256, 384, 3, 1, 1, 1),
    ("conv4", 384, 384, 3, 1, 1, 2),
    ("conv5", 384, 256, 3, 1, 1, 2),
)
_POOLED = ("conv1", "conv2", "conv5")  # max pool 3x3 stride 2 (ceil) after these
_NORMALISED = ("conv1", "conv2")  # LRN after their pooling
_POOL5_SIDE = 6  # pool5 is [B, 256, 6, 6] for a 227 x 227 input


def local_response_norm(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75) -> torch.Tensor:
    """Caffe's across-channel LRN on x [B, C, H, W]: x / (1 + alpha / size * sum of x^2 over `size` channels) ^ beta.

    Written out (nn.LocalResponseNorm pools in 3-d, whose gradient the ONNX exporter cannot translate).
    """
    squared = nn.functional.pad(x * x, (0, 0, 0, 0, size // 2, (size - 1) // 2))  # zero channels either side
    window = sum(squared[:, i : i + x.shape[1]] for i in range(size))
    return x / (1.0 + alpha / size * window) ** beta


class CaffeNetEncoder(nn.Module):
    """image x [B, 3, h, w] float32 (BGR, mean-subtracted, 0-255; h, w >= 227) -> z [B, 4096/width] float32 >= 0.

    The image is centre-cropped to 227 x 227 first (offset 14 for the generator's 256 x 256).
    """

    def __init__(self, width: int = 1) -> None:
        super().__init__()
        check_width(width, "CaffeNet")
        for name, fan_in, fan_out, kernel, stride, pad, groups in _CONVOLUTIONS:
            self.add_module(
                name,
                nn.Conv2d(
                    narrow(fan_in, width), narrow(fan_out, width), kernel, stride=stride, padding=pad, groups=groups
                ),
            )
        self.fc6 = nn.Linear(narrow(256, width) * _POOL5_SIDE**2, 4096 // width)
        self.code_dim = 4096 // width

    def caffe_layers(self) -> dict[str, list[torch.Tensor]]:
        """Caffe layer name -> parameters in Caffe's blob order (weight, bias)."""
        return layers_of(self, tuple(n for n, *_ in _CONVOLUTIONS) + ("fc6",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = (x.shape[-2] - INPUT_SIZE) // 2
        left = (x.shape[-1] - INPUT_SIZE) // 2
        h = x[:, :, top : top + INPUT_SIZE, left : left + INPUT_SIZE]
        for name, *_ in _CONVOLUTIONS:
            h = torch.relu(getattr(self, name)(h))
            if name in _POOLED:
                h = nn.functional.max_pool2d(h, kernel_size=3, stride=2, ceil_mode=True)
            if name in _NORMALISED:
                h = local_response_norm(h)
        return torch.relu(self.fc6(h.flatten(1)))


class CaffeNetHead(nn.Module):
    """fc6 code z [B, 4096/width] float32 -> logits (fc8) [B, 1000] float32: relu, fc7, relu, fc8."""

    def __init__(self, width: int = 1, classes: int = CLASSES) -> None:
        super().__init__()
        check_width(width, "CaffeNet")
        self.fc7 = nn.Linear(4096 // width, 4096 // width)
        self.fc8 = nn.Linear(4096 // width, classes)

    def caffe_layers(self) -> dict[str, list[torch.Tensor]]:
        """Caffe layer name -> parameters in Caffe's blob order (weight, bias)."""
        return layers_of(self, ("fc7", "fc8"))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc8(torch.relu(self.fc7(torch.relu(z))))


class CaffeNetClassifier(nn.Module):
    """image x [B, 3, h, w] float32 (as CaffeNetEncoder) -> logits [B, 1000] float32: the whole CaffeNet."""

    def __init__(self, encoder: CaffeNetEncoder, head: CaffeNetHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def caffe_layers(self) -> dict[str, list[torch.Tensor]]:
        """Caffe layer name -> parameters in Caffe's blob order (weight, bias)."""
        return {**self.encoder.caffe_layers(), **self.head.caffe_layers()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
