"""The largest |activation| per decoder layer while the reference runs, and the fp16 overflow warning.

Qwen2.5-VL is trained in bf16, whose range is fp32's; fp16 tops out at 65504, and MLP intermediates of
bf16-trained models are known to pass it, which turns an fp16 graph's logits into inf/NaN. Forward
hooks on every submodule of every layer (norm inputs are the residual stream, linear inputs and
outputs the projections and the MLP intermediate) record the largest magnitude each layer saw.
"""

from __future__ import annotations

import contextlib

import torch

FP16_SAFE_MAX = 6.0e4  # below fp16's largest finite value (65504), with a margin for rounding downstream


def _largest(values) -> float:
    out = 0.0
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            out = max(out, float(value.detach().abs().max()))
        elif isinstance(value, (tuple, list)):
            out = max(out, _largest(value))
    return out


@contextlib.contextmanager
def watch_layers(modules):
    """Yield a list whose entry i becomes the largest |activation| layer i (`modules[i]`, the model's own
    layer module, loaded or streamed) produced or consumed so far."""
    modules = list(modules)
    record = [0.0] * len(modules)
    handles = []
    for index, layer in enumerate(modules):
        def hook(module, inputs, output, index=index):
            record[index] = max(record[index], _largest(inputs), _largest((output,)))
        for module in layer.modules():
            if module is not layer:
                handles.append(module.register_forward_hook(hook))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def fp16_overflow_layers(record: list[float]) -> list[int]:
    """Layers whose largest |activation| would not fit fp16 with FP16_SAFE_MAX's margin."""
    return [i for i, value in enumerate(record) if value > FP16_SAFE_MAX]
