"""Depth backend `stereo`: weights-free plane-sweep multi-view stereo on the SfM poses.

For each reference frame, at two resolutions (`scale`, and `coarse_scale` for the fine level's holes):
  1. neighbour views are chosen by overlap, viewing angle and triangulation angle (baseline); a frame with
     none at `min_overlap` (few, far-apart views) takes those seeing `sparse_min_overlap` of it;
  2. `num_planes` fronto-parallel planes are swept, uniform in inverse depth over the frame's near/far range
     (the pose file's bounds when there are some, e.g. LLFF, else SfM point depths; widened by a margin);
  3. each neighbour is warped onto every plane with the plane-induced homography (torch
     `grid_sample`, batched over a chunk of planes) and compared with the reference by a windowed
     census (Hamming) or NCC cost, normalised to [0, 1];
  4. per hypothesis the best `best_k` neighbour costs are averaged (occlusion-robust), the volume is
     box-filtered, and the winner takes all with parabolic sub-hypothesis refinement in inverse depth; the
     peak ratio (best cost / best cost >= 3 hypotheses away) measures how unique the match is;
  5. pixels without texture (high-pass RMS below `min_texture`: sky, blank walls) are invalid;
  6. multi-view geometric consistency: each depth is projected into the other computed frames,
     their depth is read there and projected back; a pixel is kept when at least `geo_min_views`
     views agree within `geo_px` pixels and `geo_rel_depth` relative depth (their depths are averaged);
  7. confidence = (1 - peak ratio) x the fraction of checked views that agree; small holes in textured
     areas are filled edge-aware from confident neighbours (depth.stereo_filter), then by the coarse level.

The output is z-depth in SCENE (SfM) units — the units of `c2w` — with 0 where no reliable depth was
found, and a confidence in [0, 1]. It is metric geometry, not relative depth: the alignment needs no
affine fit for it (depth.align fits a pure scale, expected ~1, shift 0, for robustness). `StereoBackend`
returns it as disparity = 1/depth (0 invalid, see depth.result.depth_to_disparity) with kind
"metric_disparity", like every backend's DepthResult.

Everything is vectorised torch and runs on CPU (or CUDA with `device`); memory is bounded by
processing the planes in chunks: about (num_planes + num_views * plane_chunk * 3) * H' * W' floats per
frame at the processing resolution H' x W'.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from depth.checks import choice, device, number
from depth.device import resolve_device
from depth.errors import DepthError
from depth.geometry import invert_pose
from depth.result import KIND_METRIC, DepthFrames, DepthResult, depth_to_disparity
from depth.stereo_filter import fill_holes, match_confidence, texture_mask

log = logging.getLogger(__name__)


@dataclass
class StereoConfig:
    num_planes: int = 64
    """Depth hypotheses, uniform in inverse depth between near and far."""
    num_views: int = 8
    """Neighbour views considered per reference frame."""
    best_k: int = 3
    """Per hypothesis, the mean of the best k neighbour costs is used (occlusion robustness)."""
    scale: float = 0.5
    """Processing resolution as a fraction of the frame resolution; depth is upsampled back."""
    coarse_scale: float = 0.25
    """A second, coarser level (fraction of the frame resolution; 0 = off, must be < scale) fills the fine
    level's holes: its windows span 4x the area, so weakly textured surfaces match there."""
    cost: Literal["census", "ncc"] = "census"
    """Matching cost: census transform + Hamming distance, or normalised cross-correlation."""
    window: int = 5
    """Census / NCC window (odd, pixels at processing resolution)."""
    aggregate: int = 5
    """Box filter over the cost volume before winner-take-all (odd; 1 = off)."""
    max_cost: float = 0.35
    """Reject pixels whose best aggregated cost (in [0, 1]) is above this."""
    range_percentiles: tuple[float, float] = (2.0, 98.0)
    """Percentiles of the SfM point depths observed in a frame that define its near/far."""
    range_margin: float = 0.25
    """Widen the range: near / (1 + margin), far * (1 + margin)."""
    max_view_angle_deg: float = 45.0
    """Neighbours whose optical axis differs by more than this are not used."""
    min_overlap: float = 0.4
    """Neighbours must see at least this fraction of the reference view (at its median depth)."""
    target_angle_deg: float = 5.0
    """Preferred triangulation angle at the median depth (neighbour score peaks here)."""
    geo_views: int = 4
    """Computed frames each depth is checked against (geometric consistency); 0 = no check."""
    geo_min_views: int = 1
    """A pixel is kept when at least this many of them agree."""
    geo_px: float = 2.0
    """Forward-backward reprojection error threshold (pixels at processing resolution)."""
    geo_rel_depth: float = 0.04
    """Relative depth difference threshold of the consistency check (about twice the matching noise)."""
    sparse_min_overlap: float = 0.1
    """A frame with no neighbour at `min_overlap` (few, far-apart views) takes those seeing at least this
    fraction of it at its near, middle or far depth."""
    min_texture: float = 0.005
    """Pixels whose grey image (0-1) has a high-pass RMS below this over `texture_window`
    (depth.stereo_filter.texture_mask) are invalid: sky, blank walls and blown-out areas cannot be matched
    (their winner-take-all depth is speckle). 0 = off."""
    texture_window: int = 5
    """Window of the texture gate (odd, pixels at processing resolution)."""
    confidence_ratio: float = 1.0
    """Peak ratio (best cost / best cost >= 3 hypotheses away) at which the matching confidence reaches 0."""
    fill_steps: int = 8
    """Edge-aware hole filling: holes are filled at most this many pixels (processing resolution) deep from
    confident depth of similar grey value (depth.stereo_filter.fill_holes); 0 = off."""
    fill_sigma: float = 0.08
    """Grey difference (0-1) scale of the filling's similarity weight."""
    fill_min_confidence: float = 0.1
    """Only depth with at least this confidence is propagated into holes."""
    plane_chunk: int = 16
    """Planes warped at once (bounds memory)."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda"."""
    cpu_threads: int = 0
    """torch CPU threads during the sweep (0 = leave torch's setting; the ops are small, so fewer threads can
    be faster on a busy machine: measure with benchmarks/stereo.py --threads)."""

    def validate(self, where: str = "depth.stereo", check_device: bool = True) -> StereoConfig:
        """DepthError unless every field is in range; `where` prefixes the field names in the message."""
        n = f"{where}."
        number(self.num_planes, n + "num_planes", DepthError, lo=3, hi=4096, integer=True)
        number(self.num_views, n + "num_views", DepthError, lo=1, hi=64, integer=True)
        number(self.best_k, n + "best_k", DepthError, lo=1, hi=64, integer=True)
        number(self.scale, n + "scale", DepthError, lo=0, hi=1, lo_open=True)
        number(self.coarse_scale, n + "coarse_scale", DepthError, lo=0, hi=1, note="0 = off")
        choice(self.cost, n + "cost", DepthError, ("census", "ncc"))
        for name, value, lo in (("window", self.window, 3), ("aggregate", self.aggregate, 1)):
            number(value, n + name, DepthError, lo=lo, hi=31, integer=True, note="odd")
            if value % 2 == 0:
                raise DepthError(f"{n}{name} must be odd, got {value}")
        number(self.max_cost, n + "max_cost", DepthError, lo=0, hi=1)
        pr = self.range_percentiles
        if not isinstance(pr, (tuple, list)) or len(pr) != 2:
            raise DepthError(f"{n}range_percentiles must be two numbers [low, high], got {pr!r}")
        number(pr[0], n + "range_percentiles[0]", DepthError, lo=0, hi=100)
        number(pr[1], n + "range_percentiles[1]", DepthError, lo=0, hi=100)
        if not pr[0] < pr[1]:
            raise DepthError(f"{n}range_percentiles must be low < high, got {list(pr)}")
        number(self.range_margin, n + "range_margin", DepthError, lo=0, hi=100)
        number(self.max_view_angle_deg, n + "max_view_angle_deg", DepthError, lo=0, hi=180, lo_open=True)
        number(self.min_overlap, n + "min_overlap", DepthError, lo=0, hi=1)
        number(self.target_angle_deg, n + "target_angle_deg", DepthError, lo=0, hi=90, lo_open=True)
        number(self.geo_views, n + "geo_views", DepthError, lo=0, hi=64, integer=True, note="0 = no check")
        number(self.geo_min_views, n + "geo_min_views", DepthError, lo=1, hi=64, integer=True)
        if self.geo_views and self.geo_min_views > self.geo_views:
            raise DepthError(f"{n}geo_min_views ({self.geo_min_views}) must be <= geo_views ({self.geo_views})")
        number(self.geo_px, n + "geo_px", DepthError, lo=0, hi=1000, lo_open=True)
        number(self.geo_rel_depth, n + "geo_rel_depth", DepthError, lo=0, hi=1, lo_open=True)
        number(self.sparse_min_overlap, n + "sparse_min_overlap", DepthError, lo=0, hi=1)
        number(self.min_texture, n + "min_texture", DepthError, lo=0, hi=1, note="0 = off")
        number(self.texture_window, n + "texture_window", DepthError, lo=3, hi=31, integer=True, note="odd")
        if self.texture_window % 2 == 0:
            raise DepthError(f"{n}texture_window must be odd, got {self.texture_window}")
        number(self.confidence_ratio, n + "confidence_ratio", DepthError, lo=0, hi=1, lo_open=True)
        number(self.fill_steps, n + "fill_steps", DepthError, lo=0, hi=1000, integer=True, note="0 = off")
        number(self.fill_sigma, n + "fill_sigma", DepthError, lo=0, hi=1, lo_open=True)
        number(self.fill_min_confidence, n + "fill_min_confidence", DepthError, lo=0, hi=1)
        number(self.plane_chunk, n + "plane_chunk", DepthError, lo=1, hi=4096, integer=True)
        number(self.cpu_threads, n + "cpu_threads", DepthError, lo=0, hi=1024, integer=True, note="0 = torch's")
        if check_device:
            device(self.device, n + "device", DepthError)
        return self


# ----------------------------------------------------------------------------------------------------
# small pure helpers


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K [...,3,3] for an image resized by (sx, sy), for the sweep's pixel grid (pixel centres at integer
    coordinates: x' = sx (x + 0.5) - 0.5; depth.geometry.scale_intrinsics is the +0.5-centre form)."""
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, 0] *= sx
    K[..., 0, 1] *= sx
    K[..., 1, 1] *= sy
    K[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    K[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return K


def select_neighbours(
    ref: int,
    candidates: Sequence[int],
    K: np.ndarray,
    c2w: np.ndarray,
    size: tuple[int, int],
    depth: float,
    num: int,
    max_view_angle_deg: float = 45.0,
    min_overlap: float = 0.4,
    target_angle_deg: float = 5.0,
) -> list[int]:
    """Best `num` neighbour views of frame `ref` among `candidates` (frame indices; `ref` itself skipped).

    Score = overlap * g(triangulation angle), where overlap is the fraction of a grid of reference
    pixels, placed at z-depth `depth` (scene units), that project inside the candidate image, and g
    peaks at `target_angle_deg` (Gaussian, sigma 1 deg below / 10 deg above, as in MVSNet's view
    selection). Candidates with an optical-axis angle above `max_view_angle_deg`, overlap below
    `min_overlap` or a (near) zero baseline are dropped. K [T,3,3], c2w [T,4,4] OpenCV; size (W, H).
    Returns frame indices, best first (possibly fewer than `num`).
    """
    W, H = size
    gx, gy = np.meshgrid(np.linspace(0.05, 0.95, 8) * W, np.linspace(0.05, 0.95, 6) * H)
    pix = np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)], 0)  # [3,N]
    X_ref = np.linalg.inv(K[ref]) @ pix * depth  # [3,N] ref camera coords
    X_w = c2w[ref, :3, :3] @ X_ref + c2w[ref, :3, 3:4]
    C_r = c2w[ref, :3, 3]
    z_r = c2w[ref, :3, 2]
    P = C_r + depth * z_r  # point on the principal ray
    scored = []
    for j in candidates:
        if j == ref:
            continue
        z_j = c2w[j, :3, 2]
        view_angle = math.degrees(math.acos(float(np.clip(z_r @ z_j, -1.0, 1.0))))
        if view_angle > max_view_angle_deg:
            continue
        a, b = C_r - P, c2w[j, :3, 3] - P
        cosang = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
        tri = math.degrees(math.acos(np.clip(cosang, -1.0, 1.0)))
        if tri < 0.05:
            continue
        w2c = invert_pose(c2w[j])
        X_j = w2c[:3, :3] @ X_w + w2c[:3, 3:4]
        q = K[j] @ X_j
        z = q[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = q[0] / z, q[1] / z
        inside = (z > 0) & (u >= 0) & (u <= W) & (v >= 0) & (v <= H)
        overlap = float(inside.mean())
        if overlap < min_overlap:
            continue
        sigma = 1.0 if tri < target_angle_deg else 10.0
        g = math.exp(-((tri - target_angle_deg) ** 2) / (2 * sigma**2))
        scored.append((overlap * g, j))
    scored.sort(key=lambda s: -s[0])
    return [j for _, j in scored[:num]]


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over a k x k window of [B,H,W] (at the edges: over the part inside the image).

    Separable running sums (1-D cumsums keep float32 exact enough: at most k * W terms)."""
    if k <= 1:
        return x
    r = k // 2

    def run(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = t.shape[dim]
        c = F.pad(t.cumsum(dim).movedim(dim, -1), (1, 0)).movedim(-1, dim)  # c[i] = sum t[:i]
        hi = torch.arange(n, device=t.device).add(r + 1).clamp_max(n)
        lo = torch.arange(n, device=t.device).sub(r).clamp_min(0)
        return c.index_select(dim, hi) - c.index_select(dim, lo), (hi - lo).to(t.dtype)

    s, cw = run(x, -1)
    s, ch = run(s, -2)
    return s / (ch[:, None] * cw[None, :])


def _mean_best_k(costs: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k smallest values along dim 0 of [V,...] (partial bubble sort: k*(V-1) min/max ops,
    much faster than topk over a short leading dim on CPU)."""
    v = list(costs.unbind(0))
    V = len(v)
    if k >= V:
        return costs.mean(0)
    for i in range(k):
        for j in range(V - 1, i, -1):
            lo = torch.minimum(v[j - 1], v[j])
            v[j] = torch.maximum(v[j - 1], v[j])
            v[j - 1] = lo
    return torch.stack(v[:k]).mean(0)


def _census_offsets(window: int) -> list[tuple[int, int]]:
    r = window // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]


def census_bits(img: torch.Tensor, window: int) -> torch.Tensor:
    """[B,H,W] float image -> [B, window^2 - 1, H, W] bool census bits (neighbour > centre)."""
    r = window // 2
    pad = F.pad(img[:, None], (r, r, r, r), mode="replicate")[:, 0]
    H, W = img.shape[-2:]
    return torch.stack(
        [pad[:, r + dy : r + dy + H, r + dx : r + dx + W] > img for dy, dx in _census_offsets(window)], 1
    )


def _census_cost(ref_bits: torch.Tensor, warped: torch.Tensor, window: int) -> torch.Tensor:
    """Normalised Hamming distance in [0,1]: ref_bits [1,B,H,W] bool, warped [P,H,W] -> [P,H,W]."""
    r = window // 2
    pad = F.pad(warped[:, None], (r, r, r, r), mode="replicate")[:, 0]
    H, W = warped.shape[-2:]
    ham = torch.zeros(warped.shape, dtype=torch.uint8, device=warped.device)  # byte ops: ~3x faster
    for b, (dy, dx) in enumerate(_census_offsets(window)):
        ham += torch.gt(pad[:, r + dy : r + dy + H, r + dx : r + dx + W], warped).logical_xor_(ref_bits[0, b])
    return ham.to(warped.dtype) / float(window * window - 1)


def _ncc_cost(
    ref: torch.Tensor, ref_mu: torch.Tensor, ref_sd: torch.Tensor, warped: torch.Tensor, window: int
) -> torch.Tensor:
    """(1 - NCC) / 2 in [0,1] over window x window: ref [1,H,W], warped [P,H,W] -> [P,H,W]."""
    mu = _box(warped, window)
    sd = (_box(warped * warped, window) - mu * mu).clamp_min(0).sqrt()
    cov = _box(warped * ref, window) - mu * ref_mu
    ncc = cov / (sd * ref_sd + 1e-4)
    return ((1.0 - ncc) * 0.5).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------------
# the plane sweep


def _grey_small(frame: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """uint8 [H,W,3] -> float32 grey [h,w] in [0,1] at processing size (w,h), antialiased."""
    f = torch.from_numpy(np.ascontiguousarray(frame)).to(device=device, dtype=torch.float32) / 255.0
    grey = (f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114)[None, None]
    w, h = size
    if grey.shape[-2:] != (h, w):
        grey = F.interpolate(grey, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return grey[0, 0]


def _pixel_rays(K: np.ndarray, h: int, w: int, dev: torch.device) -> torch.Tensor:
    """[3, h*w] rays K^-1 (x, y, 1) of every pixel (centres at integer coordinates), z = 1."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=dev, dtype=torch.float32),
        torch.arange(w, device=dev, dtype=torch.float32),
        indexing="ij",
    )
    pix = torch.stack([xs.ravel(), ys.ravel(), torch.ones(h * w, device=dev)], 0)
    return torch.from_numpy(np.linalg.inv(K)).to(dev, torch.float32) @ pix


def _reference_features(ref_b: torch.Tensor, cfg: StereoConfig) -> dict[str, torch.Tensor]:
    """What the matching cost needs of the reference [1,h,w]: census bits, or NCC window mean and deviation."""
    if cfg.cost == "census":
        return {"bits": census_bits(ref_b, cfg.window)}
    if cfg.cost == "ncc":
        mu = _box(ref_b, cfg.window)
        return {"img": ref_b, "mu": mu, "sd": (_box(ref_b * ref_b, cfg.window) - mu * mu).clamp_min(0).sqrt()}
    raise DepthError(f"unknown stereo cost {cfg.cost!r} (use 'census' or 'ncc')")


def _plane_costs(
    img: torch.Tensor, A: torch.Tensor, b: torch.Tensor, d: torch.Tensor, ref: dict[str, torch.Tensor], cfg
) -> torch.Tensor:
    """Matching cost [P,h,w] in [0,1] of neighbour `img` [h,w] warped onto P planes at z-depths d [P,1,1]
    (neighbour pixel q = d * A + b, homogeneous); 1 where the warp leaves the neighbour image."""
    h, w = img.shape
    P = d.shape[0]
    q = d * A[None] + b[None]  # [P,3,N]
    z = q[:, 2]
    zs = torch.where(z > 1e-6, z, torch.ones_like(z))
    u, vv = q[:, 0] / zs, q[:, 1] / zs
    inside = (z > 1e-6) & (u > -0.5) & (u < w - 0.5) & (vv > -0.5) & (vv < h - 0.5)
    grid = torch.stack([(u + 0.5) / w * 2 - 1, (vv + 0.5) / h * 2 - 1], -1)  # [P,N,2]
    grid = torch.where(inside[..., None], grid, torch.full_like(grid, -2.0))
    warped = F.grid_sample(
        img[None, None], grid.reshape(1, P * h, w, 2), mode="bilinear", padding_mode="border", align_corners=False
    ).reshape(P, h, w)
    if cfg.cost == "census":
        c = _census_cost(ref["bits"], warped, cfg.window)
    else:
        c = _ncc_cost(ref["img"], ref["mu"], ref["sd"], warped, cfg.window)
    return torch.where(inside.reshape(P, h, w), c, torch.ones_like(c))


def _winner_take_all(
    volume: torch.Tensor, inv_depths: torch.Tensor, max_cost: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best hypothesis of a cost volume [D,h,w] with parabolic refinement in hypothesis index (uniform in
    inverse depth) -> (depth [h,w], 0 invalid; cost [h,w], 1 invalid; peak ratio [h,w] in [0,1], 1 invalid).
    Border hypotheses are invalid."""
    D = volume.shape[0]
    cost, idx = volume.min(0)
    cm = volume.gather(0, (idx - 1).clamp(0, D - 1)[None])[0]
    cp = volume.gather(0, (idx + 1).clamp(0, D - 1)[None])[0]
    denom = cm - 2 * cost + cp
    offset = torch.where(denom > 1e-9, (cm - cp) / (2 * denom.clamp_min(1e-9)), torch.zeros_like(cost)).clamp(-0.5, 0.5)
    step = (inv_depths[-1] - inv_depths[0]) / max(D - 1, 1)
    inv = inv_depths[0] + (idx.float() + offset) * step
    ok = (idx > 0) & (idx < D - 1) & (cost <= max_cost) & (inv > 0)
    depth = torch.where(ok, 1.0 / inv.clamp_min(1e-12), torch.zeros_like(inv))
    # peak ratio: best cost over the best cost at least 3 hypotheses away (1 = ambiguous, 0 = a sharp unique peak)
    hyp = torch.arange(D, device=volume.device)[:, None, None]
    second = torch.where((hyp - idx[None]).abs() > 2, volume, torch.full_like(volume, 2.0)).amin(0)
    ratio = (cost / second.clamp_min(1e-6)).clamp(0.0, 1.0)
    return depth, torch.where(ok, cost, torch.ones_like(cost)), torch.where(ok, ratio, torch.ones_like(ratio))


def plane_sweep(
    ref_img: torch.Tensor,
    src_imgs: list[torch.Tensor],
    K_ref: np.ndarray,
    K_src: list[np.ndarray],
    ref_from_src: list[np.ndarray],
    inv_depths: torch.Tensor,
    cfg: StereoConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Winner-take-all plane sweep for one reference image.

    Args:
        ref_img: [h,w] grey float reference at processing resolution.
        src_imgs: V neighbour images [h,w] at the same resolution.
        K_ref, K_src: 3x3 intrinsics at processing resolution.
        ref_from_src: V 4x4 transforms mapping reference-camera points into neighbour cameras
            (src_w2c @ ref_c2w), scene units.
        inv_depths: [D] hypotheses (inverse z-depth, 1/scene units), monotonic.
    Returns:
        (depth [h,w] float32 scene units, 0 invalid; best aggregated cost [h,w] in [0,1], 1 invalid;
         peak ratio [h,w]: best cost / best cost >= 3 hypotheses away, in [0,1], 1 invalid).
    """
    dev = ref_img.device
    h, w = ref_img.shape
    D = inv_depths.numel()
    rays = _pixel_rays(K_ref, h, w, dev)  # [3,N] z = 1
    # per neighbour: q(d) = d * A + b in neighbour pixels (homogeneous)
    AB = []
    for Ks, T in zip(K_src, ref_from_src):
        Kt = torch.from_numpy(Ks).to(dev, torch.float32)
        R = torch.from_numpy(T[:3, :3]).to(dev, torch.float32)
        t = torch.from_numpy(T[:3, 3]).to(dev, torch.float32)
        AB.append((Kt @ R @ rays, (Kt @ t)[:, None]))
    ref = _reference_features(ref_img[None], cfg)
    V = len(src_imgs)
    k = max(1, min(cfg.best_k, V))
    volume = torch.empty(D, h, w, device=dev)
    for p0 in range(0, D, cfg.plane_chunk):
        inv = inv_depths[p0 : p0 + cfg.plane_chunk]
        d = (1.0 / inv)[:, None, None]  # [P,1,1]
        costs = torch.empty(V, inv.numel(), h, w, device=dev)
        for v, (img, (A, b)) in enumerate(zip(src_imgs, AB)):
            costs[v] = _plane_costs(img, A, b, d, ref, cfg)
        volume[p0 : p0 + inv.numel()] = _box(_mean_best_k(costs, k), cfg.aggregate)
    return _winner_take_all(volume, inv_depths, cfg.max_cost)


def geometric_consistency(
    depths: dict[int, torch.Tensor],
    K: dict[int, np.ndarray],
    c2w: np.ndarray,
    partners: dict[int, list[int]],
    px: float,
    rel_depth: float,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Forward-backward check of each depth map against its partners' depth maps.

    Args:
        depths: frame -> [h,w] z-depth (0 invalid) at processing resolution, scene units.
        K: frame -> 3x3 intrinsics at processing resolution; c2w [T,4,4] OpenCV.
        partners: frame -> frames (keys of `depths`) to check against.
        px, rel_depth: reprojection (pixels) and relative depth thresholds.
    Returns:
        frame -> (number of agreeing partners [h,w] int, mean of the agreeing depths and the own
        depth [h,w], 0 where invalid).
    """
    out = {}
    for r, d_r in depths.items():
        dev = d_r.device
        h, w = d_r.shape
        ys, xs = torch.meshgrid(
            torch.arange(h, device=dev, dtype=torch.float32),
            torch.arange(w, device=dev, dtype=torch.float32),
            indexing="ij",
        )
        pix = torch.stack([xs.ravel(), ys.ravel(), torch.ones(h * w, device=dev)], 0)
        dr = d_r.ravel()
        X_r = torch.from_numpy(np.linalg.inv(K[r])).to(dev, torch.float32) @ pix * dr  # [3,N]
        count = torch.zeros(h * w, device=dev)
        dsum = dr.clone()
        for j in partners.get(r, []):
            T = torch.from_numpy(invert_pose(c2w[j]) @ c2w[r]).to(dev, torch.float32)  # ref -> j
            Kj = torch.from_numpy(K[j]).to(dev, torch.float32)
            X_j = T[:3, :3] @ X_r + T[:3, 3:4]
            q = Kj @ X_j
            zj = q[2]
            zs = torch.where(zj > 1e-9, zj, torch.ones_like(zj))
            uj, vj = q[0] / zs, q[1] / zs
            ui, vi = torch.round(uj).long(), torch.round(vj).long()
            inb = (zj > 1e-9) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h) & (dr > 0)
            dj = torch.zeros_like(dr)
            dj[inb] = depths[j][vi[inb], ui[inb]]
            okj = inb & (dj > 0)
            # back-project the partner's depth at (uj, vj) and project into the reference
            Xb = (
                torch.from_numpy(np.linalg.inv(K[j])).to(dev, torch.float32)
                @ torch.stack([uj, vj, torch.ones_like(uj)], 0)
                * dj
            )
            Tinv = torch.from_numpy(invert_pose(c2w[r]) @ c2w[j]).to(dev, torch.float32)
            Xr = Tinv[:3, :3] @ Xb + Tinv[:3, 3:4]
            qr = torch.from_numpy(K[r]).to(dev, torch.float32) @ Xr
            zr = qr[2]
            zrs = torch.where(zr > 1e-9, zr, torch.ones_like(zr))
            err = torch.hypot(qr[0] / zrs - pix[0], qr[1] / zrs - pix[1])
            agree = okj & (zr > 1e-9) & (err < px) & ((zr - dr).abs() < rel_depth * dr)
            count += agree.float()
            dsum += torch.where(agree, zr, torch.zeros_like(zr))
        mean = torch.where(dr > 0, dsum / (count + 1), torch.zeros_like(dr))
        out[r] = (count.reshape(h, w), mean.reshape(h, w))
    return out


def _upsample(x: torch.Tensor, size: tuple[int, int], valid: torch.Tensor) -> torch.Tensor:
    """[h,w] values with validity [h,w] -> [H,W]: bilinear where all contributing pixels are valid,
    nearest elsewhere (so coverage follows the nearest-neighbour upsampling); invalid -> 0."""
    W, H = size
    if x.shape == (H, W):
        return torch.where(valid, x, torch.zeros_like(x))
    vf = valid.float()[None, None]
    xv = (x * valid)[None, None]
    bil = F.interpolate(xv, size=(H, W), mode="bilinear", align_corners=False)
    wgt = F.interpolate(vf, size=(H, W), mode="bilinear", align_corners=False)
    near = F.interpolate(xv, size=(H, W), mode="nearest")
    near_ok = F.interpolate(vf, size=(H, W), mode="nearest") > 0.5
    out = torch.where(wgt > 0.999, bil / wgt.clamp_min(1e-6), torch.where(near_ok, near, torch.zeros_like(near)))
    return out[0, 0]


def _as_range(x: Any, n: int, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 1:
        a = np.full(n, float(a[0]))
    if a.size != n:
        raise DepthError(f"stereo: {what} must be one value or one per computed frame ({n}), got {a.size}")
    return a


def _check_inputs(
    images: np.ndarray, K: np.ndarray, c2w: np.ndarray, frame_ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(K float64 [T,3,3], c2w float64 [T,4,4], frame ids) after checking shapes against the T images."""
    K = np.asarray(K, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    T = K.shape[0]
    if K.shape != (T, 3, 3) or c2w.shape != (T, 4, 4):
        raise DepthError(f"stereo: K must be [T,3,3] and c2w [T,4,4], got {K.shape} and {c2w.shape}")
    frame_ids = [int(i) for i in frame_ids]
    if not frame_ids:
        raise DepthError("stereo: no frames to compute depth for")
    if any(not 0 <= i < T for i in frame_ids):
        raise DepthError(f"stereo: frame ids must be in [0, {T}), got {frame_ids}")
    return K, c2w, frame_ids


def _widened_range(near_far: tuple[Any, Any], n: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (near, far) [n] after checking 0 < near < far, widened by the margin."""
    near = _as_range(near_far[0], n, "near")
    far = _as_range(near_far[1], n, "far")
    if np.any(~np.isfinite(near)) or np.any(~np.isfinite(far)) or np.any(near <= 0) or np.any(far <= near):
        raise DepthError(f"stereo: invalid depth range near={near.min():.4g} far={far.max():.4g} (need 0 < near < far)")
    return near / (1.0 + margin), far * (1.0 + margin)


def stereo_depth(
    images: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    frame_ids: Sequence[int],
    near_far: tuple[Any, Any],
    cfg: StereoConfig | None = None,
    neighbour_ids: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Plane-sweep multi-view stereo depth for the frames `frame_ids`.

    Args:
        images: uint8 [T,H,W,3] RGB frames (only the reference and neighbour frames are used).
        K: [T,3,3] intrinsics in pixels of the frame resolution (undistorted pinhole).
        c2w: [T,4,4] camera-to-world, OpenCV axes, scene units.
        frame_ids: frames to compute depth for (indices into T).
        near_far: (near, far) z-depth range in scene units, each a float or one value per frame of
            `frame_ids`; widened by `cfg.range_margin` (e.g. from `depth_range`).
        cfg: StereoConfig.
        neighbour_ids: frames that may serve as neighbours (default: all T). Geometric consistency
            uses the computed frames (`frame_ids`) only.
        progress: called with (frames swept, len(frame_ids)) after each reference frame.
    Returns:
        (depth float32 [T',H,W] z-depth in scene units, 0 = invalid;
         confidence float32 [T',H,W] in [0,1], 0 where invalid), T' = len(frame_ids).
    """
    cfg = cfg or StereoConfig()
    cfg.validate("stereo", check_device=False)
    threads = torch.get_num_threads()
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _stereo_depth(images, K, c2w, frame_ids, near_far, cfg, neighbour_ids, progress)
    finally:
        torch.set_num_threads(threads)


class _GreyFrames:
    """Grey processing-resolution tensors of the frames, made on first use (each needed frame once)."""

    def __init__(self, images: np.ndarray, scale: float, device: torch.device):
        self.images = images
        H, W = images.shape[1:3]
        self.full = (W, H)
        self.small = (max(8, int(round(W * scale))), max(8, int(round(H * scale))))
        self.device = device
        self.cache: dict[int, torch.Tensor] = {}

    def __getitem__(self, i: int) -> torch.Tensor:
        if i not in self.cache:
            self.cache[i] = _grey_small(self.images[i], self.small, self.device)
        return self.cache[i]


def _sweep_frames(grey: _GreyFrames, K, Ks, c2w, frame_ids, pool, near, far, cfg, progress):
    """Plane sweep of every frame of `frame_ids` -> (raw depth, cost, peak ratio, mid depth), dicts by frame."""
    w, h = grey.small
    dev = grey.device
    raw: dict[int, torch.Tensor] = {}
    cost: dict[int, torch.Tensor] = {}
    ratio: dict[int, torch.Tensor] = {}
    mid_depth: dict[int, float] = {}
    t0 = time.perf_counter()
    for n, r in enumerate(frame_ids):
        mid_depth[r] = float(math.sqrt(near[n] * far[n]))
        nb = _neighbours(r, pool, K, c2w, grey.full, (near[n], mid_depth[r], far[n]), cfg)
        if not nb:
            log.debug(f"stereo: frame {r} has no usable neighbour view; its depth is left empty")
            raw[r], cost[r] = torch.zeros(h, w, device=dev), torch.ones(h, w, device=dev)
            ratio[r] = torch.ones(h, w, device=dev)
        else:
            inv_depths = torch.linspace(1.0 / far[n], 1.0 / near[n], cfg.num_planes, device=dev, dtype=torch.float32)
            ref_from_src = [invert_pose(c2w[j]) @ c2w[r] for j in nb]
            raw[r], cost[r], ratio[r] = plane_sweep(
                grey[r], [grey[j] for j in nb], Ks[r], [Ks[j] for j in nb], ref_from_src, inv_depths, cfg
            )
        if progress is not None:
            progress(n + 1, len(frame_ids))
    log.debug(f"stereo: plane sweep {(time.perf_counter() - t0) / len(frame_ids):.2f} s/frame at {w}x{h}")
    return raw, cost, ratio, mid_depth


def _neighbours(r: int, pool, K, c2w, size, depths: tuple[float, float, float], cfg: StereoConfig) -> list[int]:
    """Neighbour views of frame r: `select_neighbours` at the middle depth; when none qualifies (few, far-apart
    views), those overlapping at least `sparse_min_overlap` at the near, middle or far depth (best first)."""
    args = (cfg.max_view_angle_deg, cfg.min_overlap, cfg.target_angle_deg)
    nb = select_neighbours(r, pool, K, c2w, size, depths[1], cfg.num_views, *args)
    if nb or cfg.sparse_min_overlap >= cfg.min_overlap:
        return nb
    sparse = (cfg.max_view_angle_deg, cfg.sparse_min_overlap, cfg.target_angle_deg)
    for d in (depths[1], depths[0], depths[2]):
        for j in select_neighbours(r, pool, K, c2w, size, d, cfg.num_views, *sparse):
            if j not in nb:
                nb.append(j)
    return nb[: cfg.num_views]


def _consistency(raw, K, Ks, c2w, frame_ids, mid_depth, size, cfg):
    """Geometric consistency of the swept frames -> ({frame: (agreeing views, mean depth)}, partners, need)."""
    if cfg.geo_views <= 0 or len(frame_ids) <= 1:
        geo = {r: (torch.zeros_like(raw[r]), raw[r]) for r in frame_ids}
        return geo, {r: [] for r in frame_ids}, dict.fromkeys(frame_ids, 0)
    geo_cfg = StereoConfig(
        num_views=cfg.geo_views,
        max_view_angle_deg=cfg.max_view_angle_deg,
        min_overlap=cfg.min_overlap * 0.5,
        target_angle_deg=cfg.target_angle_deg,
        sparse_min_overlap=min(cfg.sparse_min_overlap, cfg.min_overlap * 0.5),
    )
    partners = {r: _neighbours(r, frame_ids, K, c2w, size, (mid_depth[r],) * 3, geo_cfg) for r in frame_ids}
    geo = geometric_consistency(raw, {i: Ks[i] for i in frame_ids}, c2w, partners, cfg.geo_px, cfg.geo_rel_depth)
    need = {r: min(cfg.geo_min_views, len(partners[r])) for r in frame_ids}
    return geo, partners, need


def _level(images, K, c2w, frame_ids, pool, near, far, cfg: StereoConfig, scale: float, dev, progress):
    """One resolution level: sweep, texture gate, geometric check, confidence, hole filling.

    Returns (grey frames at the level's size, {frame: depth [h,w] scene units, 0 invalid}, {frame: conf [h,w]})."""
    grey = _GreyFrames(images, scale, dev)
    (W, H), (w, h) = grey.full, grey.small
    Ks = scale_intrinsics(K, w / W, h / H)
    raw, _, ratio, mid_depth = _sweep_frames(grey, K, Ks, c2w, frame_ids, pool, near, far, cfg, progress)
    textured = {r: texture_mask(grey[r], cfg.texture_window, cfg.min_texture) for r in frame_ids}
    for r in frame_ids:  # textureless pixels (sky, blank walls) hold speckle: drop them before the check
        raw[r] = torch.where(textured[r], raw[r], 0.0)
    geo, partners, need = _consistency(raw, K, Ks, c2w, frame_ids, mid_depth, (W, H), cfg)
    depth: dict[int, torch.Tensor] = {}
    conf: dict[int, torch.Tensor] = {}
    for r in frame_ids:
        count, mean = geo[r]
        valid = (raw[r] > 0) & (count >= need[r]) & (mean > 0)
        c = match_confidence(ratio[r], count, len(partners[r]), valid, cfg.confidence_ratio)
        mean = torch.where(valid, mean, 0.0)
        fill = (cfg.fill_steps, cfg.fill_sigma, cfg.fill_min_confidence)
        depth[r], conf[r] = fill_holes(mean, c, grey[r], *fill, allowed=textured[r])
    return grey, depth, conf


def _merge_coarse(depth, conf, c_depth: torch.Tensor, c_conf: torch.Tensor, allowed: torch.Tensor):
    """Fine depth/conf [h,w] with its holes, where `allowed` [h,w], taken from the coarse level's [h',w']
    (nearest upsampling), the coarse confidence halved (coarser depth is less precise at edges)."""
    h, w = depth.shape
    cd = F.interpolate(c_depth[None, None], size=(h, w), mode="nearest")[0, 0]
    cc = F.interpolate(c_conf[None, None], size=(h, w), mode="nearest")[0, 0]
    take = (depth <= 0) & (cd > 0) & allowed
    return torch.where(take, cd, depth), torch.where(take, 0.5 * cc, conf)


def _stereo_depth(
    images, K, c2w, frame_ids, near_far, cfg: StereoConfig, neighbour_ids, progress
) -> tuple[np.ndarray, np.ndarray]:
    dev = resolve_device(cfg.device)
    K, c2w, frame_ids = _check_inputs(images, K, c2w, frame_ids)
    T = K.shape[0]
    pool = list(range(T)) if neighbour_ids is None else [int(i) for i in neighbour_ids]
    near, far = _widened_range(near_far, len(frame_ids), cfg.range_margin)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] != T or images.shape[-1] != 3:
        raise DepthError(f"stereo: frames must be uint8 [T,H,W,3] with T={T}, got {images.shape}")
    grey, depth, conf = _level(images, K, c2w, frame_ids, pool, near, far, cfg, cfg.scale, dev, progress)
    if 0 < cfg.coarse_scale < cfg.scale:
        _, c_depth, c_conf = _level(images, K, c2w, frame_ids, pool, near, far, cfg, cfg.coarse_scale, dev, None)
        for r in frame_ids:  # only where the fine level sees texture: coarse windows fatten thin structures
            fine_tex = texture_mask(grey[r], cfg.texture_window, cfg.min_texture)
            depth[r], conf[r] = _merge_coarse(depth[r], conf[r], c_depth[r], c_conf[r], fine_tex)
    W, H = grey.full
    depth_out = np.zeros((len(frame_ids), H, W), np.float32)
    conf_out = np.zeros((len(frame_ids), H, W), np.float32)
    for n, r in enumerate(frame_ids):
        valid = depth[r] > 0
        depth_out[n] = _upsample(depth[r], (W, H), valid).cpu().numpy()
        conf_out[n] = _upsample(conf[r], (W, H), valid).cpu().numpy()
    conf_out[depth_out <= 0] = 0.0
    return depth_out, conf_out


# ----------------------------------------------------------------------------------------------------
# depth range and the backend


def _point_depths(c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
    """z-depth [N] of world points [N,3] in the camera c2w [4,4]; only the points in front (z > 0)."""
    w2c = invert_pose(c2w)
    z = points @ w2c[2, :3] + w2c[2, 3]
    return z[z > 0]


def depth_range(
    c2w: np.ndarray,
    points: np.ndarray,
    observed: Sequence[np.ndarray] | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
    min_points: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (near, far) z-depth, scene units, from the SfM points each frame observes.

    Args:
        c2w: [T,4,4] camera-to-world (OpenCV), scene units.
        points: [N,3] SfM points in world (scene) units.
        observed: T int arrays of indices into `points` (the points each frame observes), or None.
        percentiles: near/far are these percentiles of a frame's observed point depths.
        min_points: frames with fewer observations take the percentiles over all frames' observations;
            when all frames together have fewer, every point in front of each camera is used instead.
    Returns:
        (near [T], far [T]) float64. No margin is added.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    idx = observed if observed is not None else [np.zeros(0, np.int64)] * len(c2w)
    per_frame = [_point_depths(c2w[t], points[np.asarray(ids, np.int64)]) for t, ids in enumerate(idx)]
    all_z = np.concatenate(per_frame + [np.zeros(0)])
    if all_z.size < min_points:
        if len(points) < min_points:
            raise DepthError(f"the SfM model has too few 3D points ({len(points)}) to bound the stereo depth range")
        # frames without observations: use the depth of every point in front of their cameras
        all_z = np.concatenate([_point_depths(T, points) for T in c2w])
        if all_z.size < min_points:
            raise DepthError("no SfM points in front of the cameras; cannot bound the stereo depth range")
    g_near, g_far = np.percentile(all_z, percentiles)
    near = np.array([np.percentile(z, percentiles[0]) if z.size >= min_points else g_near for z in per_frame])
    far = np.array([np.percentile(z, percentiles[1]) if z.size >= min_points else g_far for z in per_frame])
    return near, far


class StereoBackend:
    """Plane-sweep stereo on known poses: metric disparity (1/depth in scene units) with a confidence."""

    name = "stereo"

    def __init__(self, cfg: StereoConfig | None = None):
        self.cfg = cfg or StereoConfig()

    def estimate(self, frames: DepthFrames, progress: Callable[[int, int], None] | None = None) -> DepthResult:
        """Depth of every frame, each frame's neighbours chosen among the others; needs K, c2w and either the
        pose file's near/far bounds (`frames.bounds`, used when present) or the SfM points.

        The report holds the config, the per-frame depth range (near, far) and its source, coverage and timing.
        """
        cfg = self.cfg
        if frames.K is None or frames.c2w is None:
            raise DepthError("stereo needs the intrinsics and poses (K, c2w) of its frames")
        if frames.points is None and frames.bounds is None:
            raise DepthError("stereo needs the SfM points or the poses' near/far bounds to bound its depth range")
        if len(frames) < 2:
            raise DepthError(f"stereo needs at least 2 posed frames, got {len(frames)}")
        if frames.bounds is not None:
            near, far, range_from = frames.bounds[:, 0].copy(), frames.bounds[:, 1].copy(), "pose bounds"
        else:
            assert frames.points is not None  # checked above
            near, far = depth_range(frames.c2w, frames.points, frames.observed, cfg.range_percentiles)
            range_from = "sfm points"
        ids = list(range(len(frames)))
        t0 = time.perf_counter()
        depth, conf = stereo_depth(
            frames.images, frames.K, frames.c2w, ids, (near, far), cfg, neighbour_ids=ids, progress=progress
        )
        seconds = time.perf_counter() - t0
        coverage = (depth > 0).mean(axis=(1, 2))
        report = {
            "backend": self.name,
            "kind": KIND_METRIC,
            "units": "scene",
            "config": asdict(cfg),
            "frames": len(frames),
            "range_from": range_from,
            "near": near.tolist(),
            "far": far.tolist(),
            "coverage_mean": float(coverage.mean()),
            "coverage_min": float(coverage.min()),
            "seconds": seconds,
            "seconds_per_frame": seconds / len(frames),
        }
        log.info(
            f"stereo depth: {len(frames)} frames, mean coverage {coverage.mean():.0%}, "
            f"{seconds / len(frames):.2f} s/frame"
        )
        return DepthResult(depth_to_disparity(depth), KIND_METRIC, self.name, confidence=conf, report=report)
