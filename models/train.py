"""Training loop for the zoo: AdamW, one-cycle cosine schedule, on-the-fly jitter."""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    jitter_shift: float = 0.08  # affine_grid units (1.0 = half the image): ~1.3 px
    jitter_rotate_deg: float = 5.0
    jitter_scale: float = 0.06
    jitter_noise: float = 0.1  # std in normalised units, drawn per sample in [0, max]
    seed: int = 0


def jitter(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Small random per-sample affine warp (border padding) plus Gaussian noise."""
    n = x.shape[0]

    def uniform(scale: float) -> torch.Tensor:
        return (torch.rand(n, generator=gen) * 2 - 1) * scale

    angle = uniform(math.radians(cfg.jitter_rotate_deg))
    scale = 1 + uniform(cfg.jitter_scale)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin, uniform(cfg.jitter_shift)], 1),
            torch.stack([sin, cos, uniform(cfg.jitter_shift)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sigma = torch.rand(n, 1, 1, 1, generator=gen) * cfg.jitter_noise
    return x + sigma * torch.randn(x.shape, generator=gen)


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig) -> nn.Module:
    """Train `model` in place on normalised float32 images; returns it in eval mode."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    steps_per_epoch = len(x_all) // cfg.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    model.train()
    for epoch in range(cfg.epochs):
        start, total, correct = time.time(), 0.0, 0
        order = torch.randperm(len(x_all), generator=gen)
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            xb, yb = jitter(x_all[idx], cfg, gen), y_all[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            correct += int((logits.argmax(1) == yb).sum())
        log.info(
            "epoch %d/%d loss %.4f train-acc %.4f (%.0f s)",
            epoch + 1,
            cfg.epochs,
            total / steps_per_epoch,
            correct / (steps_per_epoch * cfg.batch_size),
            time.time() - start,
        )
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in eval mode, batches of 512."""
    model.eval()
    hits = 0
    for i in range(0, len(images), 512):
        logits = model(torch.from_numpy(images[i : i + 512]))
        hits += int((logits.argmax(1).numpy() == labels[i : i + 512]).sum())
    return hits / len(images)
