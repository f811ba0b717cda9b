"""Write random-init checkpoints in the key layouts of the official HRNet/DarkPose repositories,
mmpose 0.x and mmpose 1.x (no real weights are reachable in CI)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

LAYOUTS = ("official", "official_dp", "mmpose0", "mmpose1")

_HEAD_KEYS = ("final_layer.", "deconv_layers.")


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights *and* BN parameters/statistics (so a wrong key mapping changes the
    output), at magnitudes like PyTorch's default init (outputs stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(0.8 + 0.4 * torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(0.05 * torch.randn(t.shape, generator=g))
            elif t.dim() > 1:
                bound = (1.0 / max(1, t[0].numel())) ** 0.5
                t.copy_(bound * (2 * torch.rand(t.shape, generator=g) - 1))
            else:  # BN weight
                t.copy_(1.0 + 0.05 * torch.randn(t.shape, generator=g))
    return model.eval()


def to_layout(state: dict[str, torch.Tensor], layout: str) -> dict[str, object]:
    """Our (official) key names → the checkpoint object of ``layout``.

    * ``official``: the flat state dict (as in the released ``pose_hrnet_w32_256x192.pth``);
    * ``official_dp``: ``{"epoch", "state_dict": {"module." + key}, "perf"}`` (training
      ``checkpoint.pth`` of a DataParallel model);
    * ``mmpose0``: ``{"meta", "state_dict": {"backbone."|"keypoint_head." + key}}``;
    * ``mmpose1``: ``{"meta", "state_dict": {"backbone."|"head." + key}}``.
    """
    if layout == "official":
        return dict(state)
    if layout == "official_dp":
        return {
            "epoch": 210,
            "perf": 0.744,
            "state_dict": {"module." + k: v for k, v in state.items()},
        }
    head = {"mmpose0": "keypoint_head.", "mmpose1": "head."}[layout]
    mapped = {(head if k.startswith(_HEAD_KEYS) else "backbone.") + k: v for k, v in state.items()}
    version = "1.3.2" if layout == "mmpose1" else "0.29.0"
    return {"meta": {"mmpose_version": version}, "state_dict": mapped}


def write_checkpoint(model: nn.Module, path: Path, layout: str) -> Path:
    torch.save(to_layout(model.state_dict(), layout), path)
    return path
