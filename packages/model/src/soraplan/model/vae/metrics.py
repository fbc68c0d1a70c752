"""Reconstruction quality: PSNR and SSIM of videos (LPIPS lives in losses.load_lpips)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of tensors in [-1, 1]."""
    mse = ((x.float().clamp(-1, 1) - y.float().clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))


def ssim_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5, per RGB channel) of T x H x W x 3 uint8 frames."""
    x = torch.from_numpy(a).permute(0, 3, 1, 2).double().flatten(0, 1)[:, None] / 255.0
    y = torch.from_numpy(b).permute(0, 3, 1, 2).double().flatten(0, 1)[:, None] / 255.0
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]
    mx, my = F.conv2d(x, window), F.conv2d(y, window)  # valid region only, as in the reference SSIM
    vx = F.conv2d(x * x, window) - mx**2
    vy = F.conv2d(y * y, window) - my**2
    cxy = F.conv2d(x * y, window) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(ssim.mean())
