"""Post-processing of plane-sweep stereo depth (depth.stereo): texture gate, confidence, edge-aware hole filling.

All maps are torch [h,w] at the sweep's processing resolution; depth in scene units with 0 = invalid.

- `texture_mask`: pixels whose grey image has too little fine structure around them (sky, white walls,
  blown-out highlights) cannot be matched; their winner-take-all depth is speckle, so they are marked invalid.
- `match_confidence`: per pixel in [0,1] from the matching cost's peak ratio (best cost over the best cost at
  least 3 hypotheses away: 1 = ambiguous) and from how many of the checked views agree geometrically.
- `fill_holes`: small holes (a few pixels from valid depth) are filled by propagating inverse depth from
  confident neighbours whose grey value is close (a joint-bilateral diffusion that stops at image edges);
  filled pixels inherit a decayed confidence. Textureless pixels and large holes stay invalid: filling is
  restricted to the texture mask and runs a bounded number of 1-pixel steps.

Written here rather than taken from a library: OpenCV's ximgproc (fast global smoother / weighted median) is
not installed and fills every hole regardless of its size, which is what the sky must not get.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over a k x k window of [h,w] (at the edges over the part inside the image); k odd."""
    if k <= 1:
        return x
    return F.avg_pool2d(x[None, None], k, stride=1, padding=k // 2, count_include_pad=False)[0, 0]


def texture_mask(grey: torch.Tensor, window: int, min_std: float) -> torch.Tensor:
    """bool [h,w]: True where the grey image [h,w] (values in [0,1]) has texture to match: the RMS over a
    window x window neighbourhood of its high-pass part (grey minus its 3x3 mean) is at least `min_std`.

    The high-pass part ignores smooth ramps (a sky gradient, shading on a wall): census and NCC windows
    cannot localise a linear ramp along it, so a plain local standard deviation would call it textured."""
    if min_std <= 0:
        return torch.ones_like(grey, dtype=torch.bool)
    high = grey - box_mean(grey, 3)
    return box_mean(high * high, window) >= min_std * min_std


def match_confidence(
    ratio: torch.Tensor, agree: torch.Tensor, checked: int, valid: torch.Tensor, max_ratio: float
) -> torch.Tensor:
    """Confidence [h,w] in [0,1] (0 where not `valid`).

    Args:
        ratio: [h,w] peak ratio of the matching cost in [0,1] (0 = unique sharp minimum, 1 = ambiguous).
        agree: [h,w] number of views whose depth agreed in the geometric check.
        checked: views the check used (0: no check; the geometric term is then 1).
        valid: [h,w] bool.
        max_ratio: the peak ratio at which the matching term reaches 0.
    Returns:
        (1 - ratio / max_ratio) clipped to [0,1], times (agree / checked), floored at 0.05 on valid pixels.
    """
    m = (1.0 - ratio / max(max_ratio, 1e-6)).clamp(0.0, 1.0)
    g = (agree / checked).clamp(0.0, 1.0) if checked > 0 else torch.ones_like(m)
    return torch.where(valid, (m * g).clamp_min(0.05), torch.zeros_like(m))


def _neighbour_stack(x: torch.Tensor) -> torch.Tensor:
    """[8,h,w]: x shifted by each of the 8 neighbour offsets (zero padded)."""
    p = F.pad(x[None, None], (1, 1, 1, 1))[0, 0]
    h, w = x.shape
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    return torch.stack([p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in offsets])


def fill_holes(
    depth: torch.Tensor,
    conf: torch.Tensor,
    grey: torch.Tensor,
    steps: int,
    sigma: float,
    min_conf: float,
    allowed: torch.Tensor | None = None,
    decay: float = 0.8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge-aware filling of small holes in depth [h,w] (scene units, 0 = invalid).

    Each of `steps` rounds fills the invalid pixels that have at least 3 of their 8 neighbours valid with
    confidence >= `min_conf` (after the first round: filled ones too, their confidence decayed by `decay`
    per step): inverse depth = mean of those neighbours' inverse depth, weighted by conf x exp(-(grey
    difference / sigma)^2); a pixel is filled only when that weight sum reaches 1.5 (so it must resemble its
    sources). A hole is thus filled at most `steps` pixels deep from its rim, and only where `allowed` [h,w]
    (bool, e.g. the texture mask: a textureless region stays invalid even next to valid depth).

    Returns:
        (depth [h,w], confidence [h,w]) with the filled pixels added.
    """
    if steps <= 0:
        return depth, conf
    inv = torch.where(depth > 0, 1.0 / depth.clamp_min(1e-12), torch.zeros_like(depth))
    src = (depth > 0) & (conf >= min_conf)
    c = torch.where(src, conf, torch.zeros_like(conf))
    g_nb = _neighbour_stack(grey)
    simil = torch.exp(-(((g_nb - grey[None]) / max(sigma, 1e-6)) ** 2))  # [8,h,w]
    filled = torch.zeros_like(src)
    for _ in range(steps):
        ok_nb = _neighbour_stack(src.float()) > 0.5
        wgt = _neighbour_stack(c) * simil * ok_nb
        wsum = wgt.sum(0)
        cand = (~src) & (depth <= 0) & (ok_nb.sum(0) >= 3) & (wsum >= 1.5 * min_conf)
        if allowed is not None:
            cand &= allowed
        if not bool(cand.any()):
            break
        new_inv = (wgt * _neighbour_stack(inv)).sum(0) / wsum.clamp_min(1e-12)
        new_c = decay * (wgt * _neighbour_stack(c)).sum(0) / wsum.clamp_min(1e-12)
        inv = torch.where(cand, new_inv, inv)
        c = torch.where(cand, new_c, c)
        src = src | cand
        filled = filled | cand
    out_d = torch.where(filled, 1.0 / inv.clamp_min(1e-12), depth)
    out_c = torch.where(filled, c, conf)
    return out_d, out_c
