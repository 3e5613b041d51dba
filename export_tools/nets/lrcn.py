"""The LRCN captioner (Donahue et al. 2015), factored two-layer LSTM, as PPGN uses it.

Follows `lrcn_word_to_preds.deploy.prototxt` (Evolving-AI-Lab/ppgn nets/lrcn): `embedding`
(Embed, vocabulary -> 1000, no bias), `lstm1` (LSTM 1000 over the embedded previous word),
`lstm2` (LSTM 1000 over lstm1's output with CaffeNet's fc8 as a static input), `predict`
(InnerProduct 1000 -> vocabulary). PPGN feeds it the fc8 of the CaffeNet stored in the same
`lrcn_caffenet_iter_110000.caffemodel`, so the captioner carries its own fc7/fc8 head.

Caffe's LSTM layer keeps its blobs in the order W_xc [4H, in], b_c [4H], W_xc_static [4H, static]
(lstm2 only), W_hc [4H, H]; the 4H gate rows are ordered input, forget, output, candidate
(caffe lstm_layer.cpp / lstm_unit_layer.cpp). The recurrence is written as explicit cells over
the fixed token length T (no nn.LSTM), so the gradient graph exports.
"""

from __future__ import annotations

import torch
from torch import nn

from export_tools.nets.caffenet import CaffeNetHead
from export_tools.nets.deepsim import check_width

VOCABULARY = 8801  # LRCN's 8800 words + <eos> at id 0
HIDDEN = 1000  # embedding and LSTM width


class CaffeLSTMWeights(nn.Module):
    """The blobs of one Caffe LSTM layer (shapes in the module docstring); no forward of its own."""

    def __init__(self, input_size: int, hidden: int, static_size: int | None) -> None:
        super().__init__()
        self.W_xc = nn.Parameter(torch.empty(4 * hidden, input_size))
        self.b_c = nn.Parameter(torch.empty(4 * hidden))
        self.W_xc_static = nn.Parameter(torch.empty(4 * hidden, static_size)) if static_size else None
        self.W_hc = nn.Parameter(torch.empty(4 * hidden, hidden))
        for weight in (self.W_xc, self.W_xc_static, self.W_hc):
            if weight is not None:
                nn.init.uniform_(weight, -0.08, 0.08)  # LRCN's training initialisation
        nn.init.zeros_(self.b_c)

    def blobs(self) -> list[torch.Tensor]:
        """Parameters in Caffe's blob order."""
        static = [self.W_xc_static] if self.W_xc_static is not None else []
        return [self.W_xc, self.b_c, *static, self.W_hc]


def lstm_cell(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Caffe's LSTMUnit: gates [B, 4H] (input, forget, output, candidate), cell [B, H] -> (hidden, cell)."""
    i, f, o, g = gates.chunk(4, dim=1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


class LRCNCaptioner(nn.Module):
    """log p(caption | z): z [B, D] float32, tokens [B, T] int64, mask [B, T] float32 -> logp [B] float32.

    tokens hold the target word ids (the caption's words, then <eos> = 0, then padding); the
    input at step t is the previous target, and <eos> (0) at t = 0. logp sums the log
    probabilities of the targets where mask is 1. `head` maps z to the fc8 static input.
    """

    def __init__(self, head: CaffeNetHead, vocabulary: int = VOCABULARY, width: int = 1) -> None:
        super().__init__()
        check_width(width, "LRCNCaptioner")
        hidden = HIDDEN // width
        self.head = head
        self.embedding = nn.Embedding(vocabulary, hidden)
        self.lstm1 = CaffeLSTMWeights(hidden, hidden, None)
        self.lstm2 = CaffeLSTMWeights(hidden, hidden, head.fc8.out_features)
        self.predict = nn.Linear(hidden, vocabulary)
        self.hidden = hidden

    def caffe_layers(self) -> dict[str, list[torch.Tensor]]:
        """Caffe layer name -> parameters in Caffe's blob order."""
        return {
            **self.head.caffe_layers(),
            "embedding": [self.embedding.weight],
            "lstm1": self.lstm1.blobs(),
            "lstm2": self.lstm2.blobs(),
            "predict": [self.predict.weight, self.predict.bias],
        }

    def forward(self, z: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Every product is 2-d, one step at a time: a 3-d Linear would fix the batch size when traced.
        static_gates = self.head(z) @ self.lstm2.W_xc_static.T + self.lstm2.b_c  # [B, 4H]
        previous = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)  # <eos> starts
        h1 = c1 = h2 = c2 = torch.zeros_like(static_gates[:, : self.hidden])
        logp = torch.zeros_like(mask[:, 0])
        for t in range(tokens.shape[1]):
            word_gates = self.embedding(previous[:, t]) @ self.lstm1.W_xc.T + self.lstm1.b_c
            h1, c1 = lstm_cell(word_gates + h1 @ self.lstm1.W_hc.T, c1)
            h2, c2 = lstm_cell(h1 @ self.lstm2.W_xc.T + static_gates + h2 @ self.lstm2.W_hc.T, c2)
            log_probs = torch.log_softmax(self.predict(h2), dim=1)  # [B, V]
            logp = logp + mask[:, t] * log_probs.gather(1, tokens[:, t : t + 1]).squeeze(1)
        return logp
