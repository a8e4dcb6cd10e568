"""Parameter counts, the torchsummary table, and a receptive-field table computed from the model."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torchsummary import summary as torchsummary_summary

from utils.models import BlurPool2d


def count_params(model: nn.Module) -> int:
    """Trainable parameters (batch-norm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def shared_weights(model: nn.Module) -> int:
    """Weights that more than one layer uses (a layout's ``R``), counted once per extra use: what a
    per-layer count (torchsummary's) adds to the model's own."""
    per_layer = sum(p.numel() for m in model.modules() for p in m.parameters(recurse=False) if p.requires_grad)
    return per_layer - count_params(model)


def summary_table(model: nn.Module, input_size=(1, 28, 28)) -> None:
    """Print torchsummary's table. It only knows "cuda"/"cpu", so it runs on a CPU copy. torchsummary
    adds up each layer's weights, so filters two layers share count twice there; the line after the
    table says so, with the model's own count."""
    torchsummary_summary(copy.deepcopy(model).cpu(), input_size, device="cpu")
    shared = shared_weights(model)
    if shared:
        print(f"torchsummary counts the {shared:,} weights of the repeated blocks' shared filters once per use: "
              f"the model has {count_params(model):,} parameters.")


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def receptive_field(model: nn.Module, input_size=(1, 28, 28)) -> list[dict]:
    """One row per spatial layer, in execution order, from a real forward pass.

    jump = distance in input pixels between neighbouring outputs; rf = receptive field:
    ``jump_out = jump_in * stride`` and ``rf_out = rf_in + (kernel - 1) * dilation * jump_in``.
    """
    model = copy.deepcopy(model).cpu().eval()
    rows, names = [], {m: n for n, m in model.named_modules()}
    state = {"jump": 1, "rf": 1}

    def hook(module, inputs, output):
        size_in, size_out = inputs[0].shape[-1], output.shape[-1]
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            kernel, stride, padding, dilation = size_in // size_out, size_in // size_out, 0, 1
        else:
            kernel, stride = _pair(module.kernel_size)[0], _pair(module.stride)[0]
            padding, dilation = _pair(module.padding)[0], _pair(getattr(module, "dilation", 1))[0]
        jump_in, rf_in = state["jump"], state["rf"]
        state["rf"] = rf_in + (kernel - 1) * dilation * jump_in
        state["jump"] = jump_in * stride
        rows.append(dict(layer=names[module], type=type(module).__name__, kernel=kernel,
                         stride=stride, padding=padding, size_in=size_in, size_out=size_out,
                         jump_in=jump_in, jump_out=state["jump"], rf_in=rf_in, rf_out=state["rf"]))

    spatial = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, BlurPool2d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, spatial)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for h in handles:
            h.remove()
    return rows


def format_receptive_field(rows: list[dict]) -> str:
    """The receptive-field rows as a fixed-width text table."""
    head = ("layer", "type", "k", "s", "p", "in", "out", "j_in", "j_out", "rf_in", "rf_out")
    keys = ("layer", "type", "kernel", "stride", "padding", "size_in", "size_out", "jump_in",
            "jump_out", "rf_in", "rf_out")
    table = [head] + [tuple(str(r[k]) for k in keys) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def receptive_field_markdown(rows: list[dict]) -> str:
    """The receptive-field rows as a Markdown table (for the README)."""
    out = ["| layer | type | k | s | p | in | out | jump in | jump out | RF in | RF out |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        out.append(f"| `{r['layer']}` | {r['type']} | {r['kernel']} | {r['stride']} | {r['padding']} "
                   f"| {r['size_in']} | {r['size_out']} | {r['jump_in']} | {r['jump_out']} "
                   f"| {r['rf_in']} | {r['rf_out']} |")
    return "\n".join(out)
