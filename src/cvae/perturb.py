"""Random perturbations of a batch, for consistency regularisation of a classifier.

``weak`` and ``strong`` follow FixMatch (Sohn et al. 2020) in spirit, chosen per data rank so that
they apply to any data set: images (C, H, W) are shifted by whole pixels (zeros come in at the
edges) and, when strong, have a square cut out (DeVries & Taylor 2017) and noise added; 1-D signals
(C, L) are shifted in time and rescaled; feature vectors get Gaussian noise (in the model's units:
standardised features, or [0, 1] values). No label-changing transformation (no flips: a mirrored 2
is not a 2), and nothing that needs to know what the data shows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator | None) -> torch.Tensor:
    """Each example shifted by its own whole number of steps in [-max_shift, max_shift] along each
    trailing (spatial) axis; what is shifted in is zero."""
    if max_shift <= 0:
        return x
    b, spatial = x.shape[0], x.shape[2:]
    pad = [max_shift] * (2 * len(spatial))
    xp = F.pad(x, pad)
    offsets = [torch.randint(0, 2 * max_shift + 1, (b,), generator=g, device="cpu").to(x.device) for _ in spatial]
    if len(spatial) == 2:
        h, w = spatial
        rows = (torch.arange(h, device=x.device)[None] + offsets[0][:, None])  # (B, H)
        cols = (torch.arange(w, device=x.device)[None] + offsets[1][:, None])  # (B, W)
        bi = torch.arange(b, device=x.device)[:, None, None]
        out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        return out.permute(0, 3, 1, 2).contiguous()
    (length,) = spatial
    idx = torch.arange(length, device=x.device)[None] + offsets[0][:, None]  # (B, L)
    return torch.gather(xp, 2, idx[:, None, :].expand(-1, x.shape[1], -1))


def _cutout(x: torch.Tensor, fraction: float, g: torch.Generator | None) -> torch.Tensor:
    """A square (a segment, for signals) of ``fraction`` of each side set to zero, placed at random."""
    b, spatial = x.shape[0], x.shape[2:]
    keep = torch.ones((b, 1, *spatial), device=x.device, dtype=x.dtype)
    grids = torch.meshgrid(*[torch.arange(s, device=x.device) for s in spatial], indexing="ij")
    inside = torch.ones((b, *spatial), dtype=torch.bool, device=x.device)
    for axis, s in enumerate(spatial):
        size = max(1, int(round(fraction * s)))
        start = torch.randint(-size // 2, s - size // 2, (b,), generator=g, device="cpu").to(x.device)
        pos = grids[axis][None]
        view = (b,) + (1,) * len(spatial)
        inside &= (pos >= start.view(view)) & (pos < (start + size).view(view))
    keep = keep.masked_fill(inside[:, None], 0.0)
    return x * keep


def _affine(x: torch.Tensor, degrees: float, scale: float, shear: float, translate: float,
            g: torch.Generator | None) -> torch.Tensor:
    """Images: each rotated by up to ``degrees``, scaled by 1 ± ``scale``, sheared by up to ``shear``
    (radians) and moved by up to ``translate`` of its size, resampled bilinearly (zeros outside)."""
    b = x.shape[0]

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(b, generator=g, device="cpu")

    angle = u(-degrees, degrees) * torch.pi / 180
    s = u(1 - scale, 1 + scale)
    sh = u(-shear, shear)
    tx, ty = u(-translate, translate) * 2, u(-translate, translate) * 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos / s, (-sin + sh * cos) / s, tx], -1),
                         torch.stack([sin / s, (cos + sh * sin) / s, ty], -1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _noise(x: torch.Tensor, std: float, g: torch.Generator | None) -> torch.Tensor:
    return x + std * torch.randn(x.shape, generator=g, device="cpu").to(x.device, x.dtype)


def weak(x: torch.Tensor, *, unit_range: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """A small perturbation: a shift of up to 1/14 of each side (2 pixels of 28) for images and
    signals, Gaussian noise of 0.05 (unit-range) or 0.1 (standardised) for feature vectors."""
    if x.ndim >= 3:
        return _shift(x, max(1, round(min(x.shape[2:]) / 14)), generator)
    return _noise(x, 0.05 if unit_range else 0.1, generator)


def strong(x: torch.Tensor, *, unit_range: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """A large one: twice the weak shift, a cut-out of 3/8 of each side and noise (images and
    signals; a random amplitude of 0.8-1.2 for signals), or four times the weak noise and 10% of the
    features dropped (feature vectors)."""
    if x.ndim == 4:
        h = _affine(x, 20.0, 0.15, 0.3, 0.12, generator)
        h = _cutout(h, 0.375, generator)
        return _noise(h, 0.1 if unit_range else 0.2, generator)
    if x.ndim == 3:
        h = _shift(x, max(2, round(min(x.shape[2:]) / 7)), generator)
        h = _cutout(h, 0.375, generator)
        scale = 0.8 + 0.4 * torch.rand((len(x), 1, 1), generator=generator, device="cpu").to(x.device, x.dtype)
        h = h * scale  # signals: amplitude
        return _noise(h, 0.1 if unit_range else 0.2, generator)
    h = _noise(x, 0.2 if unit_range else 0.4, generator)
    drop = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) < 0.1
    return h.masked_fill(drop, 0.0)
