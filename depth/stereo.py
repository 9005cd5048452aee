"""Depth backend `stereo`: weights-free plane-sweep multi-view stereo on the SfM poses.

For each reference frame:
  1. neighbour views are chosen by overlap, viewing angle and triangulation angle (baseline);
  2. `num_planes` fronto-parallel planes are swept, uniform in inverse depth over the frame's
     near/far range (SfM point depths with a margin);
  3. each neighbour is warped onto every plane with the plane-induced homography (torch
     `grid_sample`, batched over a chunk of planes) and compared with the reference by a windowed
     census (Hamming) or NCC cost, normalised to [0, 1];
  4. per hypothesis the best `best_k` neighbour costs are averaged (occlusion-robust), the volume is
     box-filtered, and the winner takes all with parabolic sub-hypothesis refinement in inverse depth;
  5. multi-view geometric consistency: each depth is projected into the other computed frames,
     their depth is read there and projected back; a pixel is kept when at least `geo_min_views`
     views agree within `geo_px` pixels and `geo_rel_depth` relative depth (their depths are averaged).

The output is z-depth in SCENE (SfM) units — the units of `c2w` — with 0 where no reliable depth was
found, and a confidence in [0, 1]. It is metric geometry, not relative depth: the align stage needs no
affine fit for it (depth.align fits a pure scale, expected ~1, shift 0, for robustness). In
RUN/depth/disparity.npz the depth stage stores it as disparity = 1/depth (0 invalid, see
`depth_to_disparity`) with kind "metric_disparity", so every backend shares one file layout.

Everything is vectorised torch and runs on CPU (or CUDA with `device`); memory is bounded by
processing the planes in chunks: about (num_planes + num_views * plane_chunk * 3) * H' * W' floats per
frame at the processing resolution H' x W'.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from recon.artifacts.cameras import CameraSet
from depth.geometry import invert_pose
from recon.console import debug, info, track
from recon.errors import ReconError
from recon.artifacts.layout import RunPaths


@dataclass
class StereoConfig:
    num_planes: int = 64
    """Depth hypotheses, uniform in inverse depth between near and far."""
    num_views: int = 5
    """Neighbour views considered per reference frame."""
    best_k: int = 3
    """Per hypothesis, the mean of the best k neighbour costs is used (occlusion robustness)."""
    scale: float = 0.5
    """Processing resolution as a fraction of the frame resolution; depth is upsampled back."""
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
    geo_px: float = 1.0
    """Forward-backward reprojection error threshold (pixels at processing resolution)."""
    geo_rel_depth: float = 0.02
    """Relative depth difference threshold of the consistency check (census matching noise is ~1 %)."""
    plane_chunk: int = 16
    """Planes warped at once (bounds memory)."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda"."""
    cpu_threads: int = 0
    """torch CPU threads during the sweep (0 = leave torch's setting). On a busy machine 1 can be several
    times faster than the default (the ops are small; see benchmarks/stereo.py --threads)."""


# ----------------------------------------------------------------------------------------------------
# small pure helpers


def depth_to_disparity(depth: np.ndarray) -> np.ndarray:
    """float [..] z-depth (0 / non-finite / negative = invalid) -> float32 disparity 1/depth, 0 invalid."""
    depth = np.asarray(depth, dtype=np.float32)
    ok = np.isfinite(depth) & (depth > 0)
    out = np.zeros_like(depth)
    out[ok] = 1.0 / depth[ok]
    return out


def disparity_to_depth(disparity: np.ndarray) -> np.ndarray:
    """float [..] disparity (0 / non-finite / negative = invalid) -> float32 z-depth 1/disparity, 0 invalid."""
    return depth_to_disparity(disparity)


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K [...,3,3] for an image resized by (sx, sy) (pixel-centre convention: x' = sx (x + 0.5) - 0.5)."""
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

    def run(t: torch.Tensor, dim: int) -> torch.Tensor:
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


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ReconError("stereo device 'cuda' requested but no CUDA GPU is available (use device='cpu' or 'auto')")
    return torch.device(device)


def _grey_small(frame: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """uint8 [H,W,3] -> float32 grey [h,w] in [0,1] at processing size (w,h), antialiased."""
    f = torch.from_numpy(np.ascontiguousarray(frame)).to(device=device, dtype=torch.float32) / 255.0
    grey = (f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114)[None, None]
    w, h = size
    if grey.shape[-2:] != (h, w):
        grey = F.interpolate(grey, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return grey[0, 0]


def plane_sweep(
    ref_img: torch.Tensor,
    src_imgs: list[torch.Tensor],
    K_ref: np.ndarray,
    K_src: list[np.ndarray],
    ref_from_src: list[np.ndarray],
    inv_depths: torch.Tensor,
    cfg: StereoConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Winner-take-all plane sweep for one reference image.

    Args:
        ref_img: [h,w] grey float reference at processing resolution.
        src_imgs: V neighbour images [h,w] at the same resolution.
        K_ref, K_src: 3x3 intrinsics at processing resolution.
        ref_from_src: V 4x4 transforms mapping reference-camera points into neighbour cameras
            (src_w2c @ ref_c2w), scene units.
        inv_depths: [D] hypotheses (inverse z-depth, 1/scene units), monotonic.
    Returns:
        (depth [h,w] float32 scene units, 0 invalid; best aggregated cost [h,w] in [0,1], 1 invalid).
    """
    dev = ref_img.device
    h, w = ref_img.shape
    D = inv_depths.numel()
    ys, xs = torch.meshgrid(
        torch.arange(h, device=dev, dtype=torch.float32),
        torch.arange(w, device=dev, dtype=torch.float32),
        indexing="ij",
    )
    pix = torch.stack([xs.ravel(), ys.ravel(), torch.ones(h * w, device=dev)], 0)  # [3,N]
    Kr_inv = torch.from_numpy(np.linalg.inv(K_ref)).to(dev, torch.float32)
    rays = Kr_inv @ pix  # [3,N] z = 1

    # per neighbour: q(d) = d * A + b in neighbour pixels (homogeneous)
    AB = []
    for Ks, T in zip(K_src, ref_from_src):
        Kt = torch.from_numpy(Ks).to(dev, torch.float32)
        R = torch.from_numpy(T[:3, :3]).to(dev, torch.float32)
        t = torch.from_numpy(T[:3, 3]).to(dev, torch.float32)
        AB.append((Kt @ R @ rays, (Kt @ t)[:, None]))

    ref_b = ref_img[None]
    if cfg.cost == "census":
        ref_bits = census_bits(ref_b, cfg.window)
    elif cfg.cost == "ncc":
        ref_mu = _box(ref_b, cfg.window)
        ref_sd = (_box(ref_b * ref_b, cfg.window) - ref_mu * ref_mu).clamp_min(0).sqrt()
    else:
        raise ReconError(f"unknown stereo cost {cfg.cost!r} (use 'census' or 'ncc')")

    V = len(src_imgs)
    k = max(1, min(cfg.best_k, V))
    volume = torch.empty(D, h, w, device=dev)
    for p0 in range(0, D, cfg.plane_chunk):
        inv = inv_depths[p0 : p0 + cfg.plane_chunk]
        P = inv.numel()
        d = (1.0 / inv)[:, None, None]  # [P,1,1]
        costs = torch.empty(V, P, h, w, device=dev)
        for v, (img, (A, b)) in enumerate(zip(src_imgs, AB)):
            q = d * A[None] + b[None]  # [P,3,N]
            z = q[:, 2]
            zs = torch.where(z > 1e-6, z, torch.ones_like(z))
            u, vv = q[:, 0] / zs, q[:, 1] / zs
            inside = (z > 1e-6) & (u > -0.5) & (u < w - 0.5) & (vv > -0.5) & (vv < h - 0.5)
            grid = torch.stack([(u + 0.5) / w * 2 - 1, (vv + 0.5) / h * 2 - 1], -1)  # [P,N,2]
            grid = torch.where(inside[..., None], grid, torch.full_like(grid, -2.0))
            warped = F.grid_sample(
                img[None, None],
                grid.reshape(1, P * h, w, 2),
                mode="bilinear",
                padding_mode="border",
                align_corners=False,
            )
            warped = warped.reshape(P, h, w)
            if cfg.cost == "census":
                c = _census_cost(ref_bits, warped, cfg.window)
            else:
                c = _ncc_cost(ref_b, ref_mu, ref_sd, warped, cfg.window)
            costs[v] = torch.where(inside.reshape(P, h, w), c, torch.ones_like(c))
        volume[p0 : p0 + P] = _box(_mean_best_k(costs, k), cfg.aggregate)

    cost, idx = volume.min(0)
    # parabolic refinement in hypothesis index (uniform in inverse depth)
    im1 = (idx - 1).clamp(0, D - 1)
    ip1 = (idx + 1).clamp(0, D - 1)
    cm = volume.gather(0, im1[None])[0]
    cp = volume.gather(0, ip1[None])[0]
    denom = cm - 2 * cost + cp
    offset = torch.where(denom > 1e-9, (cm - cp) / (2 * denom.clamp_min(1e-9)), torch.zeros_like(cost)).clamp(-0.5, 0.5)
    pos = idx.float() + offset
    step = (inv_depths[-1] - inv_depths[0]) / max(D - 1, 1)
    inv = inv_depths[0] + pos * step
    interior = (idx > 0) & (idx < D - 1)
    ok = interior & (cost <= cfg.max_cost) & (inv > 0)
    depth = torch.where(ok, 1.0 / inv.clamp_min(1e-12), torch.zeros_like(inv))
    return depth, torch.where(ok, cost, torch.ones_like(cost))


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
        raise ReconError(f"stereo: {what} must be one value or one per computed frame ({n}), got {a.size}")
    return a


def stereo_depth(
    frames: Any,
    K: np.ndarray,
    c2w: np.ndarray,
    frame_ids: Sequence[int],
    near_far: tuple[Any, Any],
    cfg: StereoConfig | None = None,
    neighbour_ids: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Plane-sweep multi-view stereo depth for the frames `frame_ids`.

    Args:
        frames: uint8 [T,H,W,3] RGB, or a sequence / callable `frames(i) -> uint8 [H,W,3]` (loaded
            lazily, each needed frame once).
        K: [T,3,3] intrinsics in pixels of the frame resolution (undistorted pinhole).
        c2w: [T,4,4] camera-to-world, OpenCV axes, scene units.
        frame_ids: frames to compute depth for (indices into T).
        near_far: (near, far) z-depth range in scene units, each a float or one value per frame of
            `frame_ids`; widened by `cfg.range_margin` (e.g. from `sfm_depth_range`).
        cfg: StereoConfig.
        neighbour_ids: frames that may serve as neighbours (default: all T). Geometric consistency
            uses the computed frames (`frame_ids`) only.
    Returns:
        (depth float32 [T',H,W] z-depth in scene units, 0 = invalid;
         confidence float32 [T',H,W] in [0,1], 0 where invalid), T' = len(frame_ids).
    """
    cfg = cfg or StereoConfig()
    _check_cfg(cfg)
    threads = torch.get_num_threads()
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _stereo_depth(frames, K, c2w, frame_ids, near_far, cfg, neighbour_ids)
    finally:
        torch.set_num_threads(threads)


def _stereo_depth(
    frames, K, c2w, frame_ids, near_far, cfg: StereoConfig, neighbour_ids
) -> tuple[np.ndarray, np.ndarray]:
    dev = _resolve_device(cfg.device)
    K = np.asarray(K, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    T = K.shape[0]
    if K.shape != (T, 3, 3) or c2w.shape != (T, 4, 4):
        raise ReconError(f"stereo: K must be [T,3,3] and c2w [T,4,4], got {K.shape} and {c2w.shape}")
    frame_ids = [int(i) for i in frame_ids]
    if not frame_ids:
        raise ReconError("stereo: no frames to compute depth for")
    if any(not 0 <= i < T for i in frame_ids):
        raise ReconError(f"stereo: frame ids must be in [0, {T}), got {frame_ids}")
    pool = list(range(T)) if neighbour_ids is None else [int(i) for i in neighbour_ids]
    near = _as_range(near_far[0], len(frame_ids), "near")
    far = _as_range(near_far[1], len(frame_ids), "far")
    if np.any(~np.isfinite(near)) or np.any(~np.isfinite(far)) or np.any(near <= 0) or np.any(far <= near):
        raise ReconError(f"stereo: invalid depth range near={near.min():.4g} far={far.max():.4g} (need 0 < near < far)")
    near = near / (1.0 + cfg.range_margin)
    far = far * (1.0 + cfg.range_margin)

    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[0] != T or frames.shape[-1] != 3:
            raise ReconError(f"stereo: frames must be uint8 [T,H,W,3] with T={T}, got {frames.shape}")
        get = lambda i: frames[i]  # noqa: E731
    elif callable(frames):
        get = frames
    else:
        get = lambda i: frames[i]  # noqa: E731

    cache: dict[int, torch.Tensor] = {}
    full_size: list[tuple[int, int]] = []

    def image(i: int) -> torch.Tensor:
        if i not in cache:
            f = np.asarray(get(i))
            if f.ndim != 3 or f.shape[-1] != 3:
                raise ReconError(f"stereo: frame {i} has shape {f.shape}; expected [H,W,3]")
            if not full_size:
                full_size.append((f.shape[1], f.shape[0]))
            elif (f.shape[1], f.shape[0]) != full_size[0]:
                raise ReconError(
                    f"stereo: frame {i} is {f.shape[1]}x{f.shape[0]}, others are {full_size[0][0]}x{full_size[0][1]}"
                )
            cache[i] = _grey_small(f, small_size(), dev)
        return cache[i]

    sizes: dict[str, tuple[int, int]] = {}

    def small_size() -> tuple[int, int]:
        if "small" not in sizes:
            W, H = full_size[0]
            sizes["small"] = (max(8, int(round(W * cfg.scale))), max(8, int(round(H * cfg.scale))))
        return sizes["small"]

    image(frame_ids[0])
    W, H = full_size[0]
    w, h = small_size()
    sx, sy = w / W, h / H
    Ks = scale_intrinsics(K, sx, sy)

    raw: dict[int, torch.Tensor] = {}
    cost: dict[int, torch.Tensor] = {}
    mid_depth = {}
    t0 = time.perf_counter()
    for n, r in enumerate(track(frame_ids, "stereo depth")):
        mid = float(math.sqrt(near[n] * far[n]))
        mid_depth[r] = mid
        nb = select_neighbours(
            r, pool, K, c2w, (W, H), mid, cfg.num_views, cfg.max_view_angle_deg, cfg.min_overlap, cfg.target_angle_deg
        )
        if not nb:
            debug(f"stereo: frame {r} has no usable neighbour view; its depth is left empty")
            raw[r] = torch.zeros(h, w, device=dev)
            cost[r] = torch.ones(h, w, device=dev)
            continue
        inv_depths = torch.linspace(1.0 / far[n], 1.0 / near[n], cfg.num_planes, device=dev, dtype=torch.float32)
        ref_from_src = [invert_pose(c2w[j]) @ c2w[r] for j in nb]
        raw[r], cost[r] = plane_sweep(
            image(r), [image(j) for j in nb], Ks[r], [Ks[j] for j in nb], ref_from_src, inv_depths, cfg
        )
    debug(f"stereo: plane sweep {(time.perf_counter() - t0) / len(frame_ids):.2f} s/frame at {w}x{h}")

    if cfg.geo_views > 0 and len(frame_ids) > 1:
        partners = {
            r: select_neighbours(
                r,
                frame_ids,
                K,
                c2w,
                (W, H),
                mid_depth[r],
                cfg.geo_views,
                cfg.max_view_angle_deg,
                cfg.min_overlap * 0.5,
                cfg.target_angle_deg,
            )
            for r in frame_ids
        }
        geo = geometric_consistency(raw, {i: Ks[i] for i in frame_ids}, c2w, partners, cfg.geo_px, cfg.geo_rel_depth)
        need = {r: min(cfg.geo_min_views, len(partners[r])) for r in frame_ids}
    else:
        geo = {r: (torch.zeros_like(raw[r]), raw[r]) for r in frame_ids}
        partners = {r: [] for r in frame_ids}
        need = dict.fromkeys(frame_ids, 0)

    depth_out = np.zeros((len(frame_ids), H, W), np.float32)
    conf_out = np.zeros((len(frame_ids), H, W), np.float32)
    for n, r in enumerate(frame_ids):
        count, mean = geo[r]
        valid = (raw[r] > 0) & (count >= need[r]) & (mean > 0)
        match_conf = (1.0 - cost[r] / max(cfg.max_cost, 1e-6)).clamp(0, 1)
        geo_conf = (count / max(len(partners[r]), 1)).clamp(0, 1) if partners[r] else torch.ones_like(count)
        conf = torch.where(valid, (0.5 + 0.5 * match_conf) * (0.5 + 0.5 * geo_conf), torch.zeros_like(count))
        depth_out[n] = _upsample(mean, (W, H), valid).cpu().numpy()
        conf_out[n] = _upsample(conf, (W, H), valid).cpu().numpy()
    conf_out[depth_out <= 0] = 0.0
    return depth_out, conf_out


def _check_cfg(cfg: StereoConfig) -> None:
    if cfg.num_planes < 3:
        raise ReconError(f"stereo: num_planes must be >= 3, got {cfg.num_planes}")
    if cfg.num_views < 1 or cfg.best_k < 1:
        raise ReconError(f"stereo: num_views and best_k must be >= 1, got {cfg.num_views} and {cfg.best_k}")
    if cfg.window < 3 or cfg.window % 2 == 0 or cfg.aggregate < 1 or cfg.aggregate % 2 == 0:
        raise ReconError(
            f"stereo: window must be odd >= 3 and aggregate odd >= 1, got {cfg.window} and {cfg.aggregate}"
        )
    if not 0 < cfg.scale <= 1:
        raise ReconError(f"stereo: scale must be in (0, 1], got {cfg.scale}")
    if cfg.plane_chunk < 1:
        raise ReconError(f"stereo: plane_chunk must be >= 1, got {cfg.plane_chunk}")


# ----------------------------------------------------------------------------------------------------
# run-directory entry points


def _load_sfm(paths: RunPaths):
    import pycolmap

    if not paths.sfm_dir.exists():
        raise ReconError(f"{paths.sfm_dir} not found: run the pose stage first (recon poses)")
    try:
        return pycolmap.Reconstruction(str(paths.sfm_dir))
    except Exception as e:
        raise ReconError(f"cannot read the SfM model in {paths.sfm_dir} ({e})") from e


def sfm_depth_range(
    paths: RunPaths, frame_ids: Sequence[int], percentiles: tuple[float, float] = (2.0, 98.0), min_points: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (near, far) z-depth, scene units, from the SfM points each frame observes.

    Reads RUN/sfm with pycolmap; frame i of RUN/cameras.json is matched to the SfM image of the same
    file name. near/far are the given percentiles of the observed points' depths in that camera.
    Frames with fewer than `min_points` observations take the percentiles over all frames' points.
    Returns (near [len(frame_ids)], far [len(frame_ids)]) float64. No margin is added.
    """
    cams = CameraSet.load(paths.cameras_json)
    rec = _load_sfm(paths)
    by_name = {}
    for img in rec.images.values():
        by_name[Path(img.name).name] = img
        by_name.setdefault(Path(img.name).stem, img)
    xyz = {pid: p.xyz for pid, p in rec.points3D.items()}
    per_frame: list[np.ndarray] = []
    for i in frame_ids:
        f = Path(cams.files[int(i)])
        img = by_name.get(f.name, by_name.get(f.stem))
        if img is None or not img.has_pose:
            per_frame.append(np.zeros(0))
            continue
        ids = [p.point3D_id for p in img.points2D if p.has_point3D()]
        if not ids:
            per_frame.append(np.zeros(0))
            continue
        P = np.array([xyz[j] for j in ids if j in xyz], dtype=np.float64)
        M = img.cam_from_world().matrix() if callable(img.cam_from_world) else img.cam_from_world.matrix()
        z = P @ np.asarray(M)[:3, :3].T[:, 2] + np.asarray(M)[2, 3]
        per_frame.append(z[z > 0])
    all_z = np.concatenate([z for z in per_frame if z.size]) if any(z.size for z in per_frame) else np.zeros(0)
    if all_z.size < min_points:
        if rec.num_points3D() < min_points:
            raise ReconError(
                f"the SfM model in {paths.sfm_dir} has too few 3D points ({rec.num_points3D()}) to bound the stereo depth range"
            )
        # frames not in the model: use the depth of all points seen from the registered cameras
        all_z = np.concatenate([_all_point_depths(rec, cams, i) for i in frame_ids])
        if all_z.size < min_points:
            raise ReconError(
                f"no SfM points in front of the cameras of frames {list(frame_ids)[:5]}...; cannot bound the stereo depth range"
            )
    g_near, g_far = np.percentile(all_z, percentiles)
    near = np.array([np.percentile(z, percentiles[0]) if z.size >= min_points else g_near for z in per_frame])
    far = np.array([np.percentile(z, percentiles[1]) if z.size >= min_points else g_far for z in per_frame])
    return near, far


def _all_point_depths(rec, cams: CameraSet, i: int) -> np.ndarray:
    P = np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64)
    w2c = invert_pose(cams.c2w[int(i)])
    z = P @ w2c[2, :3] + w2c[2, 3]
    return z[z > 0]


def _read_frame(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except Exception as e:
        raise ReconError(f"cannot read frame {path} ({e})") from e


def run_stereo(
    paths: RunPaths, frame_ids: Sequence[int], cfg: StereoConfig | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Stereo depth for the run's frames `frame_ids` (the prior frames), for the depth stage.

    Only `frame_ids` serve as neighbour views (held-out test views are never looked at). Frames not
    registered by SfM get an all-zero map.
    Returns:
        (disparity float32 [len(frame_ids),H,W] = 1/depth in 1/scene units, 0 invalid;
         confidence float32 [len(frame_ids),H,W] in [0,1];
         report dict: kind "metric_disparity", units "scene", config, depth range, coverage, timing).
    """
    cfg = cfg or StereoConfig()
    cams = CameraSet.load(paths.cameras_json)
    frame_ids = [int(i) for i in frame_ids]
    if not frame_ids:
        raise ReconError("stereo: no frames to compute depth for")
    if any(not 0 <= i < len(cams) for i in frame_ids):
        raise ReconError(f"stereo: frame ids must be in [0, {len(cams)}), got {frame_ids}")
    reg = [i for i in frame_ids if cams.registered[i]]
    if len(reg) < 2:
        raise ReconError(
            f"stereo needs at least 2 registered frames among the {len(frame_ids)} prior frames, got {len(reg)} "
            "(with a sparse split, --prior-frames non-test computes the prior on every frame but the test views)"
        )
    near, far = sfm_depth_range(paths, reg, cfg.range_percentiles)
    t0 = time.perf_counter()
    depth, conf = stereo_depth(
        lambda i: _read_frame(paths.root / cams.files[i]), cams.K, cams.c2w, reg, (near, far), cfg, neighbour_ids=reg
    )
    seconds = time.perf_counter() - t0
    H, W = depth.shape[1:]
    if (cams.width, cams.height) != (W, H):
        raise ReconError(f"frames are {W}x{H} but cameras.json says {cams.width}x{cams.height}")
    disparity = np.zeros((len(frame_ids), H, W), np.float32)
    confidence = np.zeros_like(disparity)
    pos = {i: n for n, i in enumerate(frame_ids)}
    for m, i in enumerate(reg):
        disparity[pos[i]] = depth_to_disparity(depth[m])
        confidence[pos[i]] = conf[m]
    coverage = (depth > 0).mean(axis=(1, 2))
    report = {
        "backend": "stereo",
        "kind": "metric_disparity",
        "units": "scene",
        "config": asdict(cfg),
        "frames": len(frame_ids),
        "unregistered_frames": [i for i in frame_ids if not cams.registered[i]],
        "near": near.tolist(),
        "far": far.tolist(),
        "coverage_mean": float(coverage.mean()),
        "coverage_min": float(coverage.min()),
        "seconds": seconds,
        "seconds_per_frame": seconds / len(reg),
    }
    info(f"stereo depth: {len(reg)} frames, mean coverage {coverage.mean():.0%}, {seconds / len(reg):.2f} s/frame")
    return disparity, confidence, report
