"""Element masks over a model's parameters: bit-packed storage, global top-k and IoU.

A mask is a dict ``parameter name -> bool tensor`` of the parameter's shape. On disk it is a
safetensors file of bit-packed ``uint8`` tensors (8 elements a byte) with the shapes in its
metadata. A defense's true mask (PMP's ticket) is a *private* artifact: it lives in the defend
stage's ``private/`` folder and only the harness reads it, to score an attacker's guess.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

Mask = dict[str, torch.Tensor]
MASK_FILE = "mask.safetensors"


def save_mask(mask: Mask, path: str | Path) -> None:
    arrays = {name: np.packbits(m.detach().cpu().numpy().astype(bool).ravel())
              for name, m in mask.items()}
    shapes = {name: list(m.shape) for name, m in mask.items()}
    save_file(arrays, str(path), metadata={"shapes": json.dumps(shapes)})


def load_mask(path: str | Path) -> Mask:
    with safe_open(str(path), framework="np") as f:
        shapes = json.loads(f.metadata()["shapes"])
    packed = load_file(str(path))
    out = {}
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        bits = np.unpackbits(packed[name])[:n].astype(bool)
        out[name] = torch.from_numpy(bits.reshape(shape))
    return out


def global_topk(scores: dict[str, torch.Tensor], fraction: float) -> Mask:
    """The ``fraction`` of elements with the highest score over all tensors together (exact:
    ties broken by position)."""
    flat = torch.cat([s.detach().float().flatten().cpu() for s in scores.values()])
    k = round(fraction * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        chosen[torch.topk(flat, k, sorted=False).indices] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = chosen[start:start + s.numel()].view(s.shape)
        start += s.numel()
    return out


def mask_iou(a: Mask, b: Mask) -> float:
    """Intersection over union of two masks over the parameters they share."""
    inter = union = 0
    for name in a.keys() & b.keys():
        x, y = a[name].bool().cpu(), b[name].bool().cpu()
        inter += int((x & y).sum())
        union += int((x | y).sum())
    return inter / union if union else 1.0


def mask_fraction(mask: Mask) -> float:
    total = sum(m.numel() for m in mask.values())
    return sum(int(m.sum()) for m in mask.values()) / total if total else 0.0
