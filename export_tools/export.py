"""Export PyTorch networks to ONNX graphs of the bundle contract, validating each against PyTorch.

One function per graph role (`export_generator`, `export_classifier`, `export_class_grad`,
`export_caption_grad`, `export_encoder`, `export_composite_class_grad`); each writes `path`
(temp name, then rename) and returns a GraphReport with the differences validation measured.

Gradient graphs come from PyTorch autograd: `torch.func.grad` of the log-density is traced with
`make_fx` (parameters passed as inputs through `functional_call`), wrapped in a module that holds
the parameters as buffers, and exported with the dynamo exporter and a dynamic batch axis; a weight
used forwards and backwards is then held once (`rewrites.share_transposed_weights`) and the ReLU
backward becomes a multiplication by a mask (`rewrites.multiply_by_masks`). In every graph a strided
ConvTranspose becomes a sub-pixel convolution (`rewrites.transposed_convolutions_as_convolutions`), and
an interleave followed by a convolution to fewer channels moves past it (`rewrites.interleaves_after_convolutions`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from export_tools import ExportError, first_line
from export_tools.conventions import PixelConvention
from export_tools.rewrites import (
    interleaves_after_convolutions,
    multiply_by_masks,
    share_transposed_weights,
    transposed_convolutions_as_convolutions,
)
from export_tools.specs import IR_VERSION, SPECS, GraphDims, GraphSpec, LatentSampler
from export_tools.validate import Reference, validate_graph
from latent_onnx.contracts import BATCH_AXIS

_MAX_EMBEDDED_BYTES = 1_500_000_000  # the runtime refuses external data, so weights must fit in the file


@dataclass(frozen=True)
class GraphReport:
    """Result of exporting and validating one graph."""

    role: str  # graph role (manifest key)
    path: Path  # the written .onnx file
    max_diff: dict[str, float]  # output name -> largest |ONNX Runtime - PyTorch| over the validation batches
    seconds: float  # export + validation wall time


class GeneratorGraph(nn.Module):
    """z [B, D] -> image [B, H, W, 3] uint8 RGB: the generator followed by its pixel convention."""

    def __init__(self, generator: nn.Module, convention: PixelConvention, image_hw: tuple[int, int]):
        super().__init__()
        self.generator, self.convention, self.image_hw = generator, convention, tuple(image_hw)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.convention.to_pixels(self.generator(z), self.image_hw)


class EncoderGraph(nn.Module):
    """image [B, H, W, 3] uint8 RGB -> z [B, D]: the inverse pixel convention followed by the encoder."""

    def __init__(self, encoder: nn.Module, convention: PixelConvention):
        super().__init__()
        self.encoder, self.convention = encoder, convention

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.convention.from_pixels(image))


class ClassLogp(nn.Module):
    """(z [B, D], weights [B, K]) -> logp [B] = sum_k weights[b, k] * log_softmax(classifier(z))[b, k]."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (weights * torch.log_softmax(self.classifier(z), dim=-1)).sum(dim=-1)


class ClassifierOnGenerator(nn.Module):
    """z [B, D] -> logits [B, K] of the full image classifier applied to G(z) (the composite path)."""

    def __init__(self, generator: nn.Module, image_classifier: nn.Module):
        super().__init__()
        self.generator, self.image_classifier = generator, image_classifier

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.image_classifier(self.generator(z))


def _convolution_input_backward(
    grad_out, input, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups, output_mask
):
    """aten.convolution_backward (no ONNX function) as plain convolutions; only input and bias gradients.

    The gradient of a convolution with respect to its input is the transposed convolution with the same
    weight, and vice versa; output_padding restores the input size that stride rounding lost.
    """
    if output_mask[1]:
        raise NotImplementedError("weight gradients cannot be exported: differentiate with respect to z only")
    grad_input = None
    if output_mask[0]:
        spatial = range(len(stride))
        if transposed:
            grad_input = torch.ops.aten.convolution.default(
                grad_out, weight, None, stride, padding, dilation, False, [0 for _ in spatial], groups
            )
        else:
            lost = [
                input.shape[2 + i]
                - (
                    (grad_out.shape[2 + i] - 1) * stride[i]
                    - 2 * padding[i]
                    + dilation[i] * (weight.shape[2 + i] - 1)
                    + 1
                )
                for i in spatial
            ]
            grad_input = torch.ops.aten.convolution.default(
                grad_out, weight, None, stride, padding, dilation, True, lost, groups
            )
    grad_bias = grad_out.sum([0, *range(2, grad_out.dim())]) if output_mask[2] else None
    return grad_input, None, grad_bias


def _avg_pool_input_backward(
    grad_out, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
):
    """aten.avg_pool{2,3}d_backward (no ONNX function; LocalResponseNorm uses avg_pool3d) as one transposed
    convolution of every channel with a constant kernel; exact whenever every window has the same divisor."""
    spatial = input.dim() - 2
    kernel = list(kernel_size) * spatial if len(kernel_size) == 1 else list(kernel_size)
    stride = kernel if not stride else list(stride) * spatial if len(stride) == 1 else list(stride)
    padding = list(padding) * spatial if len(padding) == 1 else list(padding)
    out_sizes = list(grad_out.shape[2:])
    in_sizes = list(input.shape[2:])
    floor_sizes = [(i + 2 * p - k) // s + 1 for i, p, k, s in zip(in_sizes, padding, kernel, stride)]
    if out_sizes != floor_sizes or (any(padding) and not count_include_pad and divisor_override is None):
        raise NotImplementedError("average pooling with windows of different sizes cannot be differentiated for export")
    divisor = divisor_override or math.prod(kernel)
    lost = [i - ((o - 1) * s - 2 * p + k) for i, o, s, p, k in zip(in_sizes, out_sizes, stride, padding, kernel)]
    weight = grad_out.new_ones([1, 1, *kernel]) / divisor
    per_channel = grad_out.reshape(-1, 1, *out_sizes)
    grad_input = torch.ops.aten.convolution.default(
        per_channel, weight, None, stride, padding, [1] * spatial, True, lost, 1
    )
    return grad_input.reshape(input.shape)


# Backward ops the ONNX exporter cannot translate, rewritten while tracing the gradient.
_GRADIENT_DECOMPOSITIONS = {
    torch.ops.aten.convolution_backward.default: _convolution_input_backward,
    torch.ops.aten.avg_pool2d_backward.default: _avg_pool_input_backward,
    torch.ops.aten.avg_pool3d_backward.default: _avg_pool_input_backward,
}


class TracedGradient(nn.Module):
    """(z, *extra) -> (logp [B], d sum(logp) / dz [B, D]) as a traced graph; parameters held as buffers."""

    def __init__(self, logp_module: nn.Module, example_inputs: tuple[torch.Tensor, ...]):
        super().__init__()
        tensors = {**dict(logp_module.named_parameters()), **dict(logp_module.named_buffers())}
        names = list(tensors)

        def summed_logp(z, extra, state):
            logp = torch.func.functional_call(logp_module, dict(zip(names, state)), (z, *extra))
            return logp.sum(), logp

        def logp_and_grad(z, *rest):
            extra, state = rest[: len(example_inputs) - 1], rest[len(example_inputs) - 1 :]
            grad, logp = torch.func.grad(summed_logp, has_aux=True)(z, extra, state)
            return logp, grad

        state = [t.detach() for t in tensors.values()]
        trace = make_fx(logp_and_grad, tracing_mode="symbolic", decomposition_table=_GRADIENT_DECOMPOSITIONS)
        self.traced = trace(*example_inputs, *state)
        self.state_names = [f"state_{i}" for i in range(len(state))]
        for name, tensor in zip(self.state_names, state):
            self.register_buffer(name, tensor)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.traced(*inputs, *(getattr(self, name) for name in self.state_names))


def eager_reference(module: nn.Module, spec: GraphSpec) -> Reference:
    """PyTorch eager outputs of `module` for the spec's inputs (see validate.Reference).

    Gradient roles give (logp, autograd grad wrt z) in float32 and, from a float64 copy of the module,
    in float64: the float32 rounding noise of gradients that cancel is measured, not guessed.
    """
    module64 = copy.deepcopy(module).double() if spec.gradient else None

    def logp_and_grad(net: nn.Module, tensors: list[torch.Tensor]) -> list[np.ndarray]:
        z = tensors[0].clone().requires_grad_(True)
        logp = net(z, *tensors[1:])
        (grad,) = torch.autograd.grad(logp.sum(), z)
        return [logp.detach().numpy(), grad.numpy()]

    def run(inputs: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        tensors = [torch.from_numpy(inputs[t.name]) for t in spec.inputs]
        if not spec.gradient:
            with torch.no_grad():
                outputs = module(*tensors)
            return [o.numpy() for o in (outputs if isinstance(outputs, tuple) else (outputs,))], None
        tensors64 = [t.double() if t.is_floating_point() else t for t in tensors]
        try:
            exact = logp_and_grad(module64, tensors64)
        except Exception as exc:
            raise ExportError(
                f"{spec.role}: the network fails in float64 (validation measures float32 rounding "
                f"with a float64 copy): {type(exc).__name__}: {first_line(exc)}"
            ) from exc
        return logp_and_grad(module, tensors), exact

    return run


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress prints, warnings and log lines (errors still raise)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_module(
    module: nn.Module, spec: GraphSpec, dims: GraphDims, path: Path, latent_sampler: LatentSampler | None
) -> None:
    """Export `module` (inputs and outputs in spec order) to `path` with a dynamic batch axis."""
    rng = np.random.default_rng(12345)
    example = spec.example_inputs(dims, batch=2, rng=rng, latent_sampler=latent_sampler)
    args = tuple(torch.from_numpy(example[t.name]) for t in spec.inputs)
    try:
        with torch.no_grad():
            module(*args)
    except Exception as exc:
        shapes = ", ".join(f"{t.name} {list(a.shape)} {t.dtype}" for t, a in zip(spec.inputs, args))
        raise ExportError(
            f"{spec.role}: the network fails on inputs of the contract's shapes ({shapes}): "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from exc
    size = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    if size > _MAX_EMBEDDED_BYTES:
        raise ExportError(f"{spec.role}: {size / 1e9:.1f} GB of weights does not fit in one ONNX file (limit 1.5 GB)")
    batch = torch.export.Dim(BATCH_AXIS)
    per_input = tuple({0: batch} for _ in spec.inputs)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with _quiet_exporter():
            if spec.gradient:
                module = TracedGradient(module, args)
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                verbose=False,
                opset_version=spec.opset,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_shapes=(per_input,) if spec.gradient else per_input,  # TracedGradient takes *inputs
            )
            program.model.ir_version = IR_VERSION  # the graphs use no IR 10 feature (4-bit types, overloads)
            program.save(tmp, external_data=False)
        # ConvTranspose as sub-pixel Conv; a DepthToSpace moved past a Conv to fewer channels
        model = interleaves_after_convolutions(transposed_convolutions_as_convolutions(onnx.load(tmp)))
        if spec.gradient:  # each weight held once; ReLU backward as a multiplication by a mask
            model = multiply_by_masks(share_transposed_weights(model))
        for node in model.graph.node:  # the exporter's notes (source paths and lines): the same networks, same bytes
            del node.metadata_props[:]
        onnx.save(model, tmp)
    except Exception as exc:  # the exporter raises many types; report one line with the role
        tmp.unlink(missing_ok=True)
        root = exc
        while root.__cause__ is not None:
            root = root.__cause__
        raise ExportError(f"{spec.role}: ONNX export failed: {type(root).__name__}: {first_line(root)}") from exc
    os.replace(tmp, path)


def _export_and_validate(
    module: nn.Module, role: str, dims: GraphDims, path: str | Path, latent_sampler: LatentSampler | None
) -> GraphReport:
    spec = SPECS[role]
    path = Path(path)
    start = time.perf_counter()
    module.eval()
    _export_module(module, spec, dims, path, latent_sampler)
    try:
        max_diff = validate_graph(path, spec, dims, eager_reference(module, spec), latent_sampler=latent_sampler)
    except BaseException:
        path.unlink(missing_ok=True)  # a graph that failed validation is never left behind
        raise
    return GraphReport(role, path, max_diff, time.perf_counter() - start)


def export_generator(
    generator: nn.Module,
    convention: PixelConvention,
    dims: GraphDims,
    path: str | Path,
    latent_sampler: LatentSampler | None = None,
) -> GraphReport:
    """generator: z [B, D] -> x [B, 3, h, w] in `convention`; writes generator.onnx (image uint8 [B, H, W, 3])."""
    if dims.image_hw is None:
        raise ExportError("the generator graph needs the image size (GraphDims.image_hw)")
    return _export_and_validate(
        GeneratorGraph(generator, convention, dims.image_hw), "generator", dims, path, latent_sampler
    )


def export_classifier(
    head: nn.Module, dims: GraphDims, path: str | Path, latent_sampler: LatentSampler | None = None
) -> GraphReport:
    """head: z [B, D] -> logits [B, K]; writes the classifier graph."""
    return _export_and_validate(head, "classifier", dims, path, latent_sampler)


def export_class_grad(
    head: nn.Module, dims: GraphDims, path: str | Path, latent_sampler: LatentSampler | None = None
) -> GraphReport:
    """head: z [B, D] -> logits [B, K]; writes class_grad (logp [B], grad [B, D] from autograd)."""
    return _export_and_validate(ClassLogp(head), "class_grad", dims, path, latent_sampler)


def export_caption_grad(
    captioner: nn.Module, dims: GraphDims, path: str | Path, latent_sampler: LatentSampler | None = None
) -> GraphReport:
    """captioner: (z [B, D], tokens [B, T] int64, mask [B, T] float32) -> logp [B]; writes caption_grad."""
    return _export_and_validate(captioner, "caption_grad", dims, path, latent_sampler)


def export_encoder(
    encoder: nn.Module,
    convention: PixelConvention,
    dims: GraphDims,
    path: str | Path,
    latent_sampler: LatentSampler | None = None,
) -> GraphReport:
    """encoder: x [B, 3, H, W] in `convention` -> z [B, D]; writes encoder.onnx (input image uint8 [B, H, W, 3])."""
    if dims.image_hw is None:
        raise ExportError("the encoder graph needs the image size (GraphDims.image_hw)")
    return _export_and_validate(EncoderGraph(encoder, convention), "encoder", dims, path, latent_sampler)


def export_composite_class_grad(
    generator: nn.Module,
    image_classifier: nn.Module,
    dims: GraphDims,
    path: str | Path,
    latent_sampler: LatentSampler | None = None,
) -> GraphReport:
    """image_classifier(generator(z)) -> logits [B, K]; writes composite_class_grad (grad through G and the classifier)."""
    module = ClassLogp(ClassifierOnGenerator(generator, image_classifier))
    return _export_and_validate(module, "composite_class_grad", dims, path, latent_sampler)


def load_weights(module: nn.Module, path: str | Path, *, key: str | None = None) -> nn.Module:
    """Load a state dict file (torch.save) into `module`; `key` picks a nested dict (e.g. "state_dict").

    Raises ExportError for a missing or unreadable file and for missing, unexpected or mis-shaped weights.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"weights file {path} not found: check the path or create it first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExportError(
            f"weights file {path} cannot be read ({type(exc).__name__}): re-create or re-download it"
        ) from exc
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            raise ExportError(f"weights file {path} has no entry {key!r}")
        state = state[key]
    if not isinstance(state, dict):
        raise ExportError(f"weights file {path} does not hold a state dict")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mis_shaped:
        parts = [
            f"{label} {names[:3]}{'...' if len(names) > 3 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped))
            if names
        ]
        raise ExportError(f"weights file {path} does not match {type(module).__name__}: {'; '.join(parts)}")
    module.load_state_dict(state)
    return module
