"""`rasterization`: one call to render 3D Gaussians, gsplat on CUDA, compiled (numba) or PyTorch on the CPU.

The call shape and output semantics are those of gsplat 1.4.0's `gsplat.rendering.rasterization`
(pinhole cameras, not distributed), so a trainer and gsplat's densification strategies
(`gsplat.strategy.DefaultStrategy`) work the same on either backend.

On the CPU the compiled backend (`splat.numba_raster`, all cores) is the default; the pure-PyTorch one
(`splat.cpu_raster`) is the fallback when numba cannot load or compile (one logged notice) and can be chosen
with `backend="torch"` or the environment variable SPLAT_CPU_BACKEND=torch.

On CUDA, gsplat compiles its kernels on first use (minutes; nvcc and ninja needed). When that fails, "auto"
renders with the PyTorch backend on the CUDA tensors (one logged notice naming the cause), and an explicit
backend="gsplat" fails in one line; SPLAT_CUDA_BACKEND=torch chooses the PyTorch backend on CUDA outright.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from splat.cpu_raster import (
    DEFAULT_CHUNK_ELEMS,
    TileBins,
    bin_tiles,
    eval_sh,
    project_gaussians,
    rasterize_to_pixels,
)
from splat.errors import SplatError

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
BACKENDS = ("auto", "gsplat", "numba", "torch")
CPU_BACKEND_ENV = "SPLAT_CPU_BACKEND"  # what "auto" means on the CPU: "numba" (default) or "torch"
CUDA_BACKEND_ENV = "SPLAT_CUDA_BACKEND"  # what "auto" means on CUDA: "gsplat" (default) or "torch"
log = logging.getLogger(__name__)


def rasterization(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = False,
    tile_size: int | None = None,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    backend: str = "auto",
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    num_threads: int | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Rasterize N 3D Gaussians into C pinhole cameras (OpenCV axes).

    Args:
        means: [N, 3] centres, world frame (scene units).
        quats: [N, 4] rotations (w, x, y, z), need not be normalised.
        scales: [N, 3] activated scales (std devs, scene units; i.e. exp already applied).
        opacities: [N] activated opacities in [0, 1] (sigmoid already applied).
        colors: sh_degree None: [N, D] or [C, N, D] activated features.
            sh_degree set: [N, K, 3] or [C, N, K, 3] SH coefficients, K >= (sh_degree + 1)^2;
            colour = max(SH(dir) + 0.5, 0) with dir from the camera centre to the mean.
        viewmats: [C, 4, 4] world-to-camera, OpenCV axes (x right, y down, z forward).
        Ks: [C, 3, 3] intrinsics in pixels of the rendered image.
        width, height: image size in pixels.
        near_plane, far_plane: Gaussians with z-depth outside [near, far] are culled.
        radius_clip: Gaussians with a projected radius <= this many pixels are culled.
        eps2d: dilation added to the 2D covariances (pixels^2), gsplat's 0.3.
        sh_degree: see `colors`.
        packed: as gsplat: False -> per-camera arrays in meta are [C, N, ...];
            True -> [nnz, ...] over visible (camera, Gaussian) pairs with meta camera_ids/gaussian_ids.
        tile_size: tile edge in pixels; None -> 16 for gsplat, 8 for the CPU backends. A Gaussian
            reaches only pixels of tiles its 3-sigma box overlaps, so edges depend on this slightly.
        backgrounds: [C, D] colour behind the Gaussians (default black). Depth channels get 0.
        render_mode: "RGB" (colors), "D" (accumulated depth sum w_i z_i), "ED" (expected depth
            sum w_i z_i / sum w_i), "RGB+D", "RGB+ED" (depth as the last channel).
        absgrad: also accumulate sum over pixels of |dL/dmeans2d| into meta["means2d"].absgrad
            (for DefaultStrategy(absgrad=True)).
        rasterize_mode: "classic" or "antialiased" (opacity times sqrt(det(cov) / det(cov + eps2d I)),
            Mip-Splatting's compensation).
        backend: "auto" (gsplat when the tensors are on CUDA; on the CPU the environment variable
            SPLAT_CPU_BACKEND, default "numba", falling back to "torch" with one logged notice when numba
            cannot load or compile), "gsplat", "numba" (compiled, multi-core; SplatError if unavailable)
            or "torch" (pure PyTorch). The two CPU backends give the same outputs up to rounding.
        chunk_elems: torch backend working-set size ([tiles x pixels x list] elements per chunk).
        num_threads: numba backend threads; None = torch.get_num_threads() (at most the cores this process may
            use and NUMBA_NUM_THREADS).

    Returns:
        render_colors: [C, height, width, X], X = D ("RGB"), 1 ("D", "ED"), D + 1 ("RGB+D", "RGB+ED").
        render_alphas: [C, height, width, 1] accumulated opacity 1 - T.
        meta: dict as gsplat's: "means2d" ([C, N, 2] or [nnz, 2] pixels, receives gradients; call
            .retain_grad() to read them), "radii" ([C, N] or [nnz] int32 pixels, 0 = culled),
            "depths" ([C, N] z-depth), "conics" ([C, N, 3]), "opacities" ([C, N], after
            compensation), "camera_ids"/"gaussian_ids" ([nnz] int64, None when not packed),
            "tiles_per_gauss", "isect_ids", "flatten_ids", "isect_offsets", "tile_width",
            "tile_height", "tile_size", "width", "height", "n_cameras". With the torch backend the
            intersection lists leave out (tile, Gaussian) pairs whose alpha stays below 1/255 over
            the whole tile (they contribute nothing); "tiles_per_gauss" counts the full 3-sigma box.

    Performance note (torch backend): on a CPU shared with other busy processes, set
    OMP_WAIT_POLICY=PASSIVE before torch is imported (or use one torch thread); spinning OpenMP
    workers otherwise make every op wait for a descheduled thread.
    """
    if backend not in BACKENDS:
        raise SplatError(f"unknown render backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = _auto_cuda_backend() if means.is_cuda else _auto_cpu_backend(means.dtype)
    elif backend == "numba":
        _require_numba(means)
    if backend == "gsplat":
        if not means.is_cuda:
            raise SplatError("render backend 'gsplat' needs CUDA tensors; use backend='torch' on the CPU")
        if why := gsplat_unavailable():
            raise SplatError(f"render backend 'gsplat' unavailable: {why}")
        from gsplat.rendering import rasterization as gsplat_rasterization

        return gsplat_rasterization(
            means,
            quats,
            scales,
            opacities,
            colors,
            viewmats,
            Ks,
            width,
            height,
            near_plane=near_plane,
            far_plane=far_plane,
            radius_clip=radius_clip,
            eps2d=eps2d,
            sh_degree=sh_degree,
            packed=packed,
            tile_size=tile_size or 16,
            backgrounds=backgrounds,
            render_mode=render_mode,
            absgrad=absgrad,
            rasterize_mode=rasterize_mode,
        )
    opt = _TorchOptions(
        near_plane=near_plane,
        far_plane=far_plane,
        radius_clip=radius_clip,
        eps2d=eps2d,
        sh_degree=sh_degree,
        packed=packed,
        tile_size=tile_size or 8,
        render_mode=render_mode,
        absgrad=absgrad,
        rasterize_mode=rasterize_mode,
        chunk_elems=chunk_elems,
        compiled=backend == "numba",
        num_threads=num_threads,
    )
    return _rasterization_torch(
        means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height), backgrounds, opt
    )


def _check_inputs(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    backgrounds: Tensor | None,
    opt: _TorchOptions,
) -> None:
    N, C = means.shape[0], viewmats.shape[0]
    sh_degree, render_mode, rasterize_mode = opt.sh_degree, opt.render_mode, opt.rasterize_mode

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise SplatError(f"rasterization: {what}")

    need(means.ndim == 2 and means.shape[1] == 3, f"means must be [N, 3], got {list(means.shape)}")
    need(tuple(quats.shape) == (N, 4), f"quats must be [{N}, 4], got {list(quats.shape)}")
    need(tuple(scales.shape) == (N, 3), f"scales must be [{N}, 3], got {list(scales.shape)}")
    need(tuple(opacities.shape) == (N,), f"opacities must be [{N}], got {list(opacities.shape)}")
    need(viewmats.ndim == 3 and viewmats.shape[1:] == (4, 4), f"viewmats must be [C, 4, 4], got {list(viewmats.shape)}")
    need(tuple(Ks.shape) == (C, 3, 3), f"Ks must be [{C}, 3, 3], got {list(Ks.shape)}")
    need(width > 0 and height > 0, f"image size must be positive, got {width}x{height}")
    need(render_mode in RENDER_MODES, f"render_mode must be one of {', '.join(RENDER_MODES)}, got {render_mode!r}")
    need(
        rasterize_mode in ("classic", "antialiased"),
        f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}",
    )
    if sh_degree is None:
        need(
            (colors.ndim == 2 and colors.shape[0] == N) or (colors.ndim == 3 and colors.shape[:2] == (C, N)),
            f"colors must be [{N}, D] or [{C}, {N}, D] without sh_degree, got {list(colors.shape)}",
        )
    else:
        need(0 <= sh_degree <= 4, f"sh_degree must be 0..4, got {sh_degree}")
        need(
            (colors.ndim == 3 and colors.shape[0] == N and colors.shape[2] == 3)
            or (colors.ndim == 4 and colors.shape[:2] == (C, N) and colors.shape[3] == 3),
            f"SH colors must be [{N}, K, 3] or [{C}, {N}, K, 3], got {list(colors.shape)}",
        )
        need(
            (sh_degree + 1) ** 2 <= colors.shape[-2],
            f"sh_degree {sh_degree} needs {(sh_degree + 1) ** 2} SH coefficients, colors has {colors.shape[-2]}",
        )
    if backgrounds is not None:
        need(
            backgrounds.ndim == 2 and backgrounds.shape[0] == C,
            f"backgrounds must be [{C}, D], got {list(backgrounds.shape)}",
        )


@dataclass(frozen=True)
class _TorchOptions:
    """The keyword options of `rasterization` that the CPU backends use (same meanings and defaults)."""

    near_plane: float
    far_plane: float
    radius_clip: float
    eps2d: float
    sh_degree: int | None
    packed: bool
    tile_size: int
    render_mode: str
    absgrad: bool
    rasterize_mode: str
    chunk_elems: int
    compiled: bool = False  # the numba kernels instead of cpu_raster's PyTorch ones
    num_threads: int | None = None  # numba threads (None = default)


def _rasterization_torch(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    backgrounds: Tensor | None,
    opt: _TorchOptions,
) -> tuple[Tensor, Tensor, dict]:
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds, opt)
    N, C = means.shape[0], viewmats.shape[0]
    radii, means2d, depths, conics, comp = _project(means, quats, scales, viewmats, Ks, width, height, opt)
    opacities = opacities.repeat(C, 1)  # [C, N]
    if comp is not None:
        opacities = opacities * comp

    feats, backgrounds = _splat_features(means, colors, viewmats, depths, opt.sh_degree, opt.render_mode, backgrounds)
    camera_ids: Tensor | None = None
    gaussian_ids: Tensor | None = None
    if opt.packed:
        camera_ids, gaussian_ids = torch.nonzero(radii > 0, as_tuple=True)
        radii, means2d, depths, conics, opacities, feats = (
            t[camera_ids, gaussian_ids] for t in (radii, means2d, depths, conics, opacities, feats)
        )
        splat_cams = camera_ids
    else:
        splat_cams = torch.arange(C, device=means.device).repeat_interleave(N)

    bin_args = (means2d.detach().reshape(-1, 2), radii.reshape(-1), depths.detach().reshape(-1), splat_cams, C)
    cn, op = conics.detach().reshape(-1, 3), opacities.detach().reshape(-1)
    bins: TileBins
    if opt.compiled:
        from splat import numba_raster

        bins = nbins = numba_raster.bin_tiles(
            *bin_args, width, height, opt.tile_size, conics=cn, opacities=op, threads=opt.num_threads
        )
        render_colors, render_alphas = numba_raster.rasterize_to_pixels(
            means2d, conics, feats, opacities, nbins, width, height, backgrounds, opt.absgrad, opt.num_threads
        )
    else:
        bins = bin_tiles(*bin_args, width, height, opt.tile_size, conics=cn, opacities=op)
        render_colors, render_alphas = rasterize_to_pixels(
            means2d, conics, feats, opacities, bins, width, height, backgrounds, opt.absgrad, opt.chunk_elems
        )
    if opt.render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )

    meta = _meta(bins, camera_ids, gaussian_ids, radii, means2d, depths, conics, opacities, width, height, opt)
    return render_colors, render_alphas, meta


def _project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    opt: _TorchOptions,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """radii, means2d, depths, conics, compensations of the CPU backend in `opt` (see cpu_raster.project_gaussians).
    The compiled projection gives Ks no gradient, so the PyTorch one serves when Ks asks for one."""
    kw: dict[str, Any] = dict(
        eps2d=opt.eps2d,
        near_plane=opt.near_plane,
        far_plane=opt.far_plane,
        radius_clip=opt.radius_clip,
        calc_compensations=opt.rasterize_mode == "antialiased",
    )
    if opt.compiled and not Ks.requires_grad:
        from splat import numba_raster

        return numba_raster.project_gaussians(
            means, quats, scales, viewmats, Ks, width, height, threads=opt.num_threads, **kw
        )
    return project_gaussians(means, quats, scales, viewmats, Ks, width, height, **kw)


_NUMBA_READY: dict[torch.dtype, str] = {}  # dtype -> "" (compiled) or why numba cannot serve
_NOTICE_GIVEN: list[bool] = []


def _numba_error(dtype: torch.dtype) -> str:
    """Why the compiled backend cannot render `dtype` ("" when it can); imports and compiles (or loads from
    numba's cache) the kernels on first use."""
    if dtype not in (torch.float32, torch.float64):
        return f"the compiled backend renders float32 and float64, not {dtype}"
    if dtype not in _NUMBA_READY:
        try:
            from splat import numba_raster

            numba_raster.compile_kernels(dtype)
            _NUMBA_READY[dtype] = ""
        except Exception as e:  # noqa: BLE001 - any import or compile failure: the PyTorch path serves instead
            _NUMBA_READY[dtype] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return _NUMBA_READY[dtype]


def _auto_backend(env: str, fast: str, why_not: Callable[[], str], notice: list[bool], message: str) -> str:
    """`fast` or "torch" for backend='auto': the environment variable `env` ("" = `fast`) chooses; `fast` when
    `why_not()` is "", else "torch" after one logged `message` % why (once per process, `notice` remembers)."""
    choice = os.environ.get(env, fast).strip().lower() or fast
    if choice not in (fast, "torch"):
        raise SplatError(f"{env}={choice!r}: use '{fast}' or 'torch'")
    if choice == "torch":
        return "torch"
    why = why_not()
    if not why:
        return fast
    if not notice:
        notice.append(True)
        log.warning(message, why)
    return "torch"


def _auto_cpu_backend(dtype: torch.dtype) -> str:
    """'numba' or 'torch' for backend='auto' on the CPU: SPLAT_CPU_BACKEND, numba when it loads."""
    return _auto_backend(
        CPU_BACKEND_ENV,
        "numba",
        lambda: _numba_error(dtype),
        _NOTICE_GIVEN,
        "compiled CPU rasterizer unavailable (%s); using the slower PyTorch one",
    )


_CUDA_NOTICE: list[bool] = []
_GSPLAT_STATUS: list[str] = []  # [why gsplat's CUDA kernels cannot run, "" when they can], once per process


def gsplat_unavailable() -> str:
    """Why gsplat's CUDA kernels cannot run in this process ("" when they can).

    The first call imports gsplat's extension, which compiles it on first use (README, "On a GPU": 214 s on 16 cores for
    sm_90 with nvcc 13.0; about 20 minutes on 2) and loads it from torch's extension cache afterwards. The answer is
    kept for the process: gsplat deletes an unfinished build and starts over on each import attempt, so a failed
    build is not retried at every render call. Call it only where CUDA tensors are rendered (a machine with nvcc
    but no GPU would otherwise compile for minutes)."""
    if not _GSPLAT_STATUS:
        try:
            from gsplat.cuda._backend import _C

            why = "" if _C is not None else "gsplat found no CUDA toolkit (nvcc) to compile its kernels with"
        except Exception as e:  # noqa: BLE001 - the JIT build's error (compiler, ninja, CUDA_HOME): named in one line
            lines = str(e).strip().splitlines()
            why = f"building gsplat's CUDA kernels failed: {type(e).__name__}: {lines[0] if lines else ''}"
        _GSPLAT_STATUS.append(why)
    return _GSPLAT_STATUS[0]


def _auto_cuda_backend() -> str:
    """'gsplat' or 'torch' for backend='auto' on CUDA tensors: SPLAT_CUDA_BACKEND, gsplat when its kernels load."""
    return _auto_backend(
        CUDA_BACKEND_ENV,
        "gsplat",
        gsplat_unavailable,
        _CUDA_NOTICE,
        "%s; rendering with the PyTorch rasterizer on the GPU (slower; see README, 'On a GPU')",
    )


def _require_numba(means: Tensor) -> None:
    if means.is_cuda:
        raise SplatError("render backend 'numba' runs on the CPU; use backend='gsplat' for CUDA tensors")
    why = _numba_error(means.dtype)
    if why:
        raise SplatError(f"render backend 'numba' unavailable: {why}")


def _meta(
    bins: TileBins,
    camera_ids: Tensor | None,
    gaussian_ids: Tensor | None,
    radii: Tensor,
    means2d: Tensor,
    depths: Tensor,
    conics: Tensor,
    opacities: Tensor,
    width: int,
    height: int,
    opt: _TorchOptions,
) -> dict:
    """gsplat's `meta` dict (the keys its densification strategies read), from the torch backend's tensors."""
    C = bins.n_cameras
    return {
        "camera_ids": camera_ids,
        "gaussian_ids": gaussian_ids,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opacities,
        "tile_width": bins.tile_width,
        "tile_height": bins.tile_height,
        "tiles_per_gauss": bins.tiles_per_splat.int().reshape(radii.shape),
        "isect_ids": bins.isect_ids if hasattr(bins, "isect_ids") else _isect_ids(bins, depths),
        "flatten_ids": bins.flatten_ids.int(),
        "isect_offsets": bins.tile_start.int().reshape(C, bins.tile_height, bins.tile_width),
        "width": width,
        "height": height,
        "tile_size": opt.tile_size,
        "n_cameras": C,
    }


def _splat_features(
    means: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    depths: Tensor,
    sh_degree: int | None,
    render_mode: str,
    backgrounds: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """The channels each splat carries for `render_mode` ([C, N, D]: colours from SH or as given, then z-depth),
    and the backgrounds [C, D] padded to match (0 for the depth channel)."""
    C = viewmats.shape[0]
    if sh_degree is None:
        feats = colors.expand(C, -1, -1) if colors.ndim == 2 else colors  # [C, N, D]
    else:
        campos = torch.inverse(viewmats)[:, :3, 3]  # [C, 3]
        dirs = means[None] - campos[:, None]  # [C, N, 3]
        shs = colors.expand(C, -1, -1, -1) if colors.ndim == 3 else colors
        feats = torch.clamp_min(eval_sh(sh_degree, dirs, shs) + 0.5, 0.0)  # [C, N, 3]
    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([feats, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        feats = depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(C, 1)
    if backgrounds is not None and backgrounds.shape[-1] != feats.shape[-1]:
        raise SplatError(f"rasterization: backgrounds have {backgrounds.shape[-1]} channels, colors {feats.shape[-1]}")
    return feats, backgrounds


@torch.no_grad()
def _isect_ids(bins: TileBins, depths: Tensor) -> Tensor:
    """gsplat's 64-bit intersection keys: camera | tile | depth bits (what its strategies' meta expects)."""
    tiles_n_bits = (bins.tile_width * bins.tile_height).bit_length()
    n_tiles_cam = bins.tile_width * bins.tile_height
    depth_bits = depths.detach().reshape(-1)[bins.flatten_ids].float().view(torch.int32).long()
    return (
        ((bins.isect_tiles // n_tiles_cam) << (32 + tiles_n_bits))
        | ((bins.isect_tiles % n_tiles_cam) << 32)
        | (depth_bits & 0xFFFFFFFF)
    )
