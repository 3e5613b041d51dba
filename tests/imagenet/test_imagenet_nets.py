"""The network definitions reproduce Caffe's layer arithmetic, checked against independent formulations."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from export_tools.nets.caffenet import CaffeNetClassifier, CaffeNetEncoder, CaffeNetHead, local_response_norm
from export_tools.nets.deepsim import DeePSiMGenerator
from export_tools.nets.lrcn import LRCNCaptioner, lstm_cell

# Caffe orders an LSTM's gate rows input, forget, output, candidate; torch input, forget, candidate, output.
CAFFE_TO_TORCH_GATES = [0, 1, 3, 2]


def _torch_gate_order(weight: torch.Tensor) -> torch.Tensor:
    return torch.cat([weight.chunk(4)[i] for i in CAFFE_TO_TORCH_GATES])


def test_lstm_cell_is_caffes_lstm_unit():
    torch.manual_seed(0)
    cell = nn.LSTMCell(3, 5)
    x, h, c = torch.randn(2, 3), torch.randn(2, 5), torch.randn(2, 5)
    caffe_w_ih = _torch_gate_order(cell.weight_ih)  # the swap is its own inverse: torch -> Caffe order
    caffe_w_hh = _torch_gate_order(cell.weight_hh)
    caffe_b = _torch_gate_order(cell.bias_ih + cell.bias_hh)
    got_h, got_c = lstm_cell(x @ caffe_w_ih.T + h @ caffe_w_hh.T + caffe_b, c)
    want_h, want_c = cell(x, (h, c))
    torch.testing.assert_close(got_h, want_h)
    torch.testing.assert_close(got_c, want_c)


def test_lrcn_log_probability_matches_a_reference_lstm():
    torch.manual_seed(0)
    captioner = LRCNCaptioner(CaffeNetHead(width=16), vocabulary=12, width=16)
    z = torch.rand(3, 256)
    tokens = torch.tensor([[4, 7, 0, 0, 0], [1, 2, 3, 11, 0], [5, 0, 0, 0, 0]])
    mask = (torch.arange(5)[None] <= torch.tensor([[2], [4], [1]])).float()
    hidden = captioner.hidden
    lstm1, lstm2 = nn.LSTMCell(hidden, hidden), nn.LSTMCell(hidden + 1000, hidden)  # lstm2 reads [lstm1, fc8]
    with torch.no_grad():
        for cell, caffe, w_ih in (
            (lstm1, captioner.lstm1, captioner.lstm1.W_xc),
            (lstm2, captioner.lstm2, torch.cat([captioner.lstm2.W_xc, captioner.lstm2.W_xc_static], 1)),
        ):
            cell.weight_ih.copy_(_torch_gate_order(w_ih))
            cell.weight_hh.copy_(_torch_gate_order(caffe.W_hc))
            cell.bias_ih.copy_(_torch_gate_order(caffe.b_c))
            cell.bias_hh.zero_()
    fc8 = captioner.head(z)
    want = torch.zeros(3)
    state1 = state2 = (torch.zeros(3, hidden), torch.zeros(3, hidden))
    previous = torch.zeros(3, dtype=torch.long)  # <eos> starts every caption
    for t in range(5):
        state1 = lstm1(captioner.embedding(previous), state1)
        state2 = lstm2(torch.cat([state1[0], fc8], 1), state2)
        log_p = torch.log_softmax(captioner.predict(state2[0]), dim=1)
        want += mask[:, t] * log_p[torch.arange(3), tokens[:, t]]
        previous = tokens[:, t]
    torch.testing.assert_close(captioner(z, tokens, mask), want)


def test_conv_transpose_is_caffes_deconvolution():
    """Caffe's Deconvolution scatters x[c, i, j] * W[c, o] into y[o, i*s - p + ki, j*s - p + kj]."""
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 4, 4, 4)), rng.standard_normal(4)
    stride, pad, k = 2, 1, 4
    full = np.zeros((4, (3 - 1) * stride + k, (3 - 1) * stride + k))
    for c in range(2):
        for i in range(3):
            for j in range(3):
                full[:, i * stride : i * stride + k, j * stride : j * stride + k] += x[c, i, j] * w[c]
    want = full[:, pad:-pad, pad:-pad] + b[:, None, None]
    layer = nn.ConvTranspose2d(2, 4, k, stride=stride, padding=pad).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
        layer.bias.copy_(torch.from_numpy(b))
    np.testing.assert_allclose(layer(torch.from_numpy(x)[None])[0].detach().numpy(), want, atol=1e-12)


def test_lrn_is_caffes_across_channel_formula():
    """Caffe: b = a / (1 + alpha / n * sum of a^2 over n channels centred on c, zero padded) ^ beta."""
    a = np.random.default_rng(0).standard_normal((1, 7, 2, 2)) * 30
    padded = np.pad(a**2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    window = sum(padded[:, i : i + 7] for i in range(5))
    want = a / (1 + 1e-4 / 5 * window) ** 0.75
    got = local_response_norm(torch.from_numpy(a))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_shapes_follow_the_published_architecture():
    """Caffe pooling rounds up: out = ceil((in - 3) / 2) + 1; 227 -> 55 -> 27 -> 13 -> 6 as in CaffeNet."""
    torch.manual_seed(0)
    encoder, generator = CaffeNetEncoder(width=16), DeePSiMGenerator(width=16)
    sizes = []
    for name in ("conv1", "conv2", "conv5"):
        getattr(encoder, name).register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    image = generator(torch.rand(2, 256))
    assert image.shape == (2, 3, 256, 256)
    assert CaffeNetClassifier(encoder, CaffeNetHead(width=16))(image).shape == (2, 1000)
    assert sizes == [55, 27, 13]
    pooled = nn.functional.max_pool2d(torch.zeros(1, 1, 14, 14), 3, 2, ceil_mode=True)
    assert pooled.shape[-1] == math.ceil((14 - 3) / 2) + 1
    assert (encoder(image) >= 0).all()  # relu6 runs in place in Caffe: the code is post-ReLU
