"""splat.render.rasterization (both CPU backends: numba and torch) against the brute-force reference, gradcheck,
edge cases, gsplat's DefaultStrategy on its meta, a real RGB-D frame, and gsplat itself where CUDA exists."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from support.reference import render_reference

from splat.errors import SplatError
from splat.render import rasterization

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ICL = DATA / "icl_nuim_livingroom_5frames"


def _rot_y(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)


def make_scene(
    seed: int,
    n: int = 40,
    n_cams: int = 2,
    width: int = 36,
    height: int = 28,
    dtype=torch.float64,
    opacity=(0.05, 0.95),
    sh_degree: int | None = 3,
):
    """Random Gaussians 1.5-4 m in front of C cameras that look roughly the same way (OpenCV axes)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * 0.7 + torch.tensor([0.0, 0.0, 2.6], dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.2 + 0.04
    lo, hi = opacity
    opacities = torch.rand(n, generator=g, dtype=dtype) * (hi - lo) + lo
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g, dtype=dtype)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype) * 0.3
    viewmats = torch.eye(4, dtype=dtype).repeat(n_cams, 1, 1)
    for c in range(1, n_cams):
        viewmats[c, :3, :3] = _rot_y(0.15 * c)
        viewmats[c, :3, 3] = torch.tensor([0.1 * c, -0.05, 0.2], dtype=dtype)
    Ks = torch.tensor([[36.0, 0, width / 2], [0, 33.0, height / 2], [0, 0, 1]], dtype=dtype).repeat(n_cams, 1, 1)
    return dict(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        sh_degree=sh_degree,
    )


def _leaves(scene, names):
    return {k: (scene[k].clone().requires_grad_(True) if k in names else scene[k]) for k in scene}


def _compare(scene, names, atol=1e-9, rtol=1e-7, **kwargs):
    """Render with both renderers, compare outputs and input gradients of a random linear loss."""
    a = _leaves(scene, names)
    b = {k: (v.detach().clone().requires_grad_(True) if k in names else v) for k, v in a.items()}
    rgb_a, alpha_a, meta = rasterization(**a, **kwargs)
    rgb_b, alpha_b = render_reference(**b, **kwargs)
    assert rgb_a.shape == rgb_b.shape and alpha_a.shape == alpha_b.shape
    torch.testing.assert_close(rgb_a, rgb_b, atol=atol, rtol=rtol)
    torch.testing.assert_close(alpha_a, alpha_b, atol=atol, rtol=rtol)
    g = torch.Generator().manual_seed(7)
    w_rgb = torch.randn(rgb_a.shape, generator=g, dtype=rgb_a.dtype)
    w_alpha = torch.randn(alpha_a.shape, generator=g, dtype=rgb_a.dtype)
    ((rgb_a * w_rgb).sum() + (alpha_a * w_alpha).sum()).backward()
    ((rgb_b * w_rgb).sum() + (alpha_b * w_alpha).sum()).backward()
    for k in names:
        assert a[k].grad is not None and torch.isfinite(a[k].grad).all(), k
        scale = b[k].grad.abs().max().item() + 1e-12
        torch.testing.assert_close(a[k].grad / scale, b[k].grad / scale, atol=1e-7, rtol=1e-6, msg=k)
    return rgb_a, alpha_a, meta


PARAMS = ["means", "quats", "scales", "opacities", "colors"]


@pytest.fixture(autouse=True, params=["numba", "torch"])
def cpu_backend(request, monkeypatch):
    """Every test here runs on both CPU backends (SPLAT_CPU_BACKEND chooses what backend="auto" uses)."""
    monkeypatch.setenv("SPLAT_CPU_BACKEND", request.param)
    return request.param


def test_matches_reference_rgb_ed_sh_background_two_cameras():
    scene = make_scene(0)
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=torch.float64)
    scene_bg = dict(scene, backgrounds=bg)
    rgb, alpha, meta = _compare(scene_bg, PARAMS + ["viewmats", "backgrounds"], render_mode="RGB+ED")
    assert rgb.shape == (2, 28, 36, 4) and alpha.shape == (2, 28, 36, 1)
    assert 0.2 < alpha.mean().item() < 0.99  # a real scene, neither empty nor saturated
    assert meta["means2d"].shape == (2, 40, 2) and meta["radii"].shape == (2, 40)
    assert meta["radii"].dtype == torch.int32 and meta["gaussian_ids"] is None


@pytest.mark.parametrize("mode", ["RGB", "D", "ED", "RGB+D"])
def test_matches_reference_modes(mode):
    scene = make_scene(1, n_cams=1, sh_degree=None)
    names = PARAMS if "RGB" in mode else PARAMS[:4]
    _compare(scene, names, render_mode=mode)


def test_saturation_clamp_and_early_stop_match_reference(monkeypatch):
    # many nearly opaque wide layers: alpha hits the 0.999 clamp and pixels stop at T <= 1e-4
    from splat import cpu_raster

    scene = make_scene(2, n=60, n_cams=1, opacity=(0.9995, 0.99999), sh_degree=None)
    scene["scales"] = scene["scales"] * 3.0
    rgb, alpha, _ = _compare(scene, PARAMS, render_mode="RGB+ED")
    assert (alpha > 0.999).float().mean() > 0.3
    # both rules are exercised here: switching either off changes the image
    for name, value in (("T_MIN", 0.0), ("_LOG_ALPHA_MAX", 0.0)):
        with monkeypatch.context() as m:
            m.setattr(cpu_raster, name, value)
            other, _, _ = rasterization(**scene, render_mode="RGB+ED", backend="torch")
        assert (other - rgb.detach()).abs().max() > 1e-6, name


@pytest.mark.parametrize("tile_size", [4, 16])
def test_tile_size_and_antialiased_match_reference(tile_size):
    scene = make_scene(3, n_cams=1)
    _compare(scene, PARAMS, tile_size=tile_size, rasterize_mode="antialiased")


def test_chunking_gives_identical_results():
    scene = make_scene(4, n=80, n_cams=2, width=48, height=40)
    outs = []
    for chunk_elems in (1 << 19, 64):  # everything in one chunk / one tile per chunk
        p = _leaves(scene, PARAMS)
        rgb, alpha, meta = rasterization(**p, render_mode="RGB+ED", chunk_elems=chunk_elems)
        ((rgb * 1.3).sum() + alpha.sum()).backward()
        outs.append((rgb.detach(), [p[k].grad for k in PARAMS]))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-12, rtol=0)
    for ga, gb in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(ga, gb, atol=1e-10, rtol=1e-9)


def test_backward_recompute_when_nothing_stored():
    from splat.cpu_raster import bin_tiles, project_gaussians, quat_scale_to_covar, rasterize_to_pixels

    s = make_scene(5, n_cams=1, sh_degree=None)
    radii, means2d, depths, conics, _ = project_gaussians(
        s["means"], None, None, s["viewmats"], s["Ks"], 36, 28, covars=quat_scale_to_covar(s["quats"], s["scales"])
    )
    radii2, means2d2, depths2, conics2, _ = project_gaussians(
        s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], 36, 28
    )
    assert torch.equal(radii, radii2) and torch.allclose(conics, conics2, rtol=1e-10, atol=0)
    bins = bin_tiles(
        means2d.reshape(-1, 2), radii.reshape(-1), depths.reshape(-1), torch.zeros(40, dtype=torch.long), 1, 36, 28, 8
    )
    grads = []
    for store in (1 << 30, 0):
        inputs = [
            t.detach().clone().requires_grad_(True) for t in (means2d, conics, s["colors"][None], s["opacities"][None])
        ]
        rgb, alpha = rasterize_to_pixels(*inputs, bins, 36, 28, chunk_elems=256, store_bytes=store)
        (rgb.sum() + 2 * alpha.sum()).backward()
        grads.append([t.grad for t in inputs])
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, atol=1e-12, rtol=1e-10)


def test_gradcheck_float64_tiny_scene():
    s = make_scene(6, n=6, n_cams=1, width=14, height=12, sh_degree=1)
    s["Ks"] = torch.tensor([[[16.0, 0, 7.0], [0, 16.0, 6.0], [0, 0, 1]]], dtype=torch.float64)
    s["scales"] = s["scales"] * 2
    bg = torch.tensor([[0.3, 0.6, 0.1]], dtype=torch.float64, requires_grad=True)
    inputs = tuple(s[k].clone().requires_grad_(True) for k in PARAMS) + (bg,)

    def fn(means, quats, scales, opacities, colors, backgrounds):
        rgb, alpha, _ = rasterization(
            means,
            quats,
            scales,
            opacities,
            colors,
            s["viewmats"],
            s["Ks"],
            14,
            12,
            sh_degree=1,
            backgrounds=backgrounds,
            render_mode="RGB+ED",
        )
        return rgb, alpha

    rgb, alpha = fn(*inputs)
    assert alpha.max() > 0.3  # the Gaussians are on screen
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_culled_gaussians_behind_outside_and_beyond_far():
    s = make_scene(8, n=30, n_cams=1, sh_degree=None)
    extra = torch.tensor(
        [
            [0.0, 0.0, -1.0],  # behind the camera
            [0.0, 0.0, 0.005],  # in front of the near plane
            [40.0, 0.0, 2.0],  # far outside the image to the right
            [0.0, -30.0, 2.0],  # far above the image
            [0.0, 0.0, 500.0],
        ],  # beyond far_plane=100
        dtype=torch.float64,
    )
    full = dict(s)
    full["means"] = torch.cat([s["means"], extra])
    full["quats"] = torch.cat([s["quats"], s["quats"][:5]])
    full["scales"] = torch.cat([s["scales"], torch.full((5, 3), 0.3, dtype=torch.float64)])
    full["opacities"] = torch.cat([s["opacities"], torch.full((5,), 0.9, dtype=torch.float64)])
    full["colors"] = torch.cat([s["colors"], torch.ones(5, 3, dtype=torch.float64)])
    p = _leaves(full, PARAMS)
    rgb, alpha, meta = rasterization(**p, far_plane=100.0)
    assert (meta["radii"][0, 30:] == 0).all() and (meta["radii"][0, :30] > 0).sum() > 20
    base, base_alpha, _ = rasterization(**s, far_plane=100.0)
    torch.testing.assert_close(rgb, base, atol=1e-12, rtol=0)
    (rgb.sum() + alpha.sum()).backward()
    for k in PARAMS:
        assert torch.isfinite(p[k].grad).all(), k
        assert (p[k].grad[30:] == 0).all(), k
    assert p["means"].grad[:30].abs().sum() > 0


def test_background_and_empty_view():
    s = make_scene(9, n=10, n_cams=1, sh_degree=None)
    s["means"] = s["means"] * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)  # all behind the camera
    bg = torch.tensor([[0.25, 0.5, 0.75]], dtype=torch.float64)
    rgb, alpha, meta = rasterization(**s, backgrounds=bg)
    assert (meta["radii"] == 0).all()
    torch.testing.assert_close(rgb, bg.view(1, 1, 1, 3).expand_as(rgb))
    assert (alpha == 0).all()
    depth, _, _ = rasterization(**s, backgrounds=bg, render_mode="RGB+D")
    assert (depth[..., 3] == 0).all() and torch.allclose(depth[..., :3], rgb)
    none = {k: (v[:0] if k in PARAMS else v) for k, v in s.items()}  # no Gaussians at all
    rgb0, alpha0, _ = rasterization(**none, backgrounds=bg)
    torch.testing.assert_close(rgb0, rgb)
    assert (alpha0 == 0).all()


def test_expected_depth_of_two_fronto_parallel_layers():
    # two wide flat Gaussians straight ahead at z = 2 and z = 3; ED at the centre pixel is the
    # alpha-weighted mean of the two depths, D the plain weighted sum
    dtype = torch.float64
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]], dtype=dtype)
    quats = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]], dtype=dtype)
    scales = torch.tensor([[1.0, 1.0, 1e-3], [1.0, 1.0, 1e-3]], dtype=dtype)
    opacities = torch.tensor([0.6, 0.5], dtype=dtype)
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype)
    K = torch.tensor([[[20.0, 0, 8.0], [0, 20.0, 8.0], [0, 0, 1]]], dtype=dtype)
    vm = torch.eye(4, dtype=dtype)[None]
    out, alpha, _ = rasterization(means, quats, scales, opacities, colors, vm, K, 16, 16, render_mode="RGB+ED")
    d, _, _ = rasterization(means, quats, scales, opacities, colors, vm, K, 16, 16, render_mode="D")
    # pixel (7, 7) has centre (7.5, 7.5): offset 0.5 px -> sigma tiny but not zero; compute it
    w1 = 0.6 * math.exp(-0.5 * (0.5**2 + 0.5**2) / (400.0 / 4.0 + 0.3))
    w2 = (1 - w1) * 0.5 * math.exp(-0.5 * (0.5**2 + 0.5**2) / (400.0 / 9.0 + 0.3))
    assert out[0, 7, 7, 3].item() == pytest.approx((2 * w1 + 3 * w2) / (w1 + w2), rel=1e-9)
    assert d[0, 7, 7, 0].item() == pytest.approx(2 * w1 + 3 * w2, rel=1e-9)
    assert alpha[0, 7, 7, 0].item() == pytest.approx(w1 + w2, rel=1e-9)
    assert out[0, 7, 7, 0].item() == pytest.approx(w1, rel=1e-9)


def test_packed_matches_unpacked():
    s = make_scene(10, n_cams=2)
    p1, p2 = _leaves(s, PARAMS), _leaves(s, PARAMS)
    rgb1, a1, m1 = rasterization(**p1, packed=False, render_mode="RGB+ED")
    rgb2, a2, m2 = rasterization(**p2, packed=True, render_mode="RGB+ED")
    torch.testing.assert_close(rgb1, rgb2, atol=1e-12, rtol=0)
    nnz = int((m1["radii"] > 0).sum())
    assert m2["means2d"].shape == (nnz, 2) and m2["camera_ids"].shape == (nnz,)
    torch.testing.assert_close(m2["radii"], m1["radii"][m2["camera_ids"], m2["gaussian_ids"]])
    m1["means2d"].retain_grad()
    m2["means2d"].retain_grad()
    (rgb1.sum() + a1.sum()).backward()
    (rgb2.sum() + a2.sum()).backward()
    torch.testing.assert_close(m2["means2d"].grad, m1["means2d"].grad[m2["camera_ids"], m2["gaussian_ids"]])
    for k in PARAMS:
        torch.testing.assert_close(p1[k].grad, p2[k].grad, atol=1e-10, rtol=1e-9)


def test_absgrad_bounds_grad_norm():
    s = make_scene(11, n_cams=1, sh_degree=None)
    p = _leaves(s, PARAMS)
    rgb, alpha, meta = rasterization(**p, absgrad=True)
    meta["means2d"].retain_grad()
    g = torch.Generator().manual_seed(3)
    (rgb * torch.randn(rgb.shape, generator=g, dtype=rgb.dtype)).sum().backward()
    grad, absgrad = meta["means2d"].grad, meta["means2d"].absgrad
    assert absgrad.shape == grad.shape == (1, 40, 2)
    assert (absgrad >= grad.abs() - 1e-12).all()
    assert (absgrad > grad.abs() * 1.05).any()  # pixel terms of both signs do occur


def test_default_strategy_densifies_on_cpu_meta():
    from gsplat.strategy import DefaultStrategy

    s = make_scene(12, n=50, n_cams=1, sh_degree=1, dtype=torch.float32)
    params = torch.nn.ParameterDict(
        {
            "means": s["means"],
            "scales": torch.log(s["scales"]),
            "quats": s["quats"],
            "opacities": torch.logit(s["opacities"]),
            "sh0": s["colors"][:, :1],
            "shN": s["colors"][:, 1:],
        }
    )
    optimizers = {k: torch.optim.Adam([params[k]], lr=1e-3) for k in params}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=3, reset_every=1000, grow_grad2d=1e-6, prune_opa=0.001)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.full((1, 28, 36, 3), 0.5)
    counts = []
    for step in range(4):
        rgb, alpha, info = rasterization(
            params["means"],
            params["quats"],
            torch.exp(params["scales"]),
            torch.sigmoid(params["opacities"]),
            torch.cat([params["sh0"], params["shN"]], 1),
            s["viewmats"].float(),
            s["Ks"].float(),
            36,
            28,
            sh_degree=1,
        )
        strategy.step_pre_backward(params, optimizers, state, step, info)
        (rgb - target).abs().mean().backward()
        if step == 0:
            assert info["means2d"].grad is not None and info["means2d"].grad.abs().sum() > 0
        strategy.step_post_backward(params, optimizers, state, step, info)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad()
        counts.append(len(params["means"]))
    assert counts[0] == 50 and counts[-1] > 50  # step 3 duplicated/split Gaussians with image-space grads
    assert all(p.shape[0] == counts[-1] for p in params.values())


def test_bad_input_raises_recon_error():
    s = make_scene(13, n_cams=1, sh_degree=None)
    with pytest.raises(SplatError, match="quats"):
        rasterization(**dict(s, quats=s["quats"][:5]))
    with pytest.raises(SplatError, match="render_mode"):
        rasterization(**s, render_mode="rgb")
    with pytest.raises(SplatError, match="CUDA"):
        rasterization(**s, backend="gsplat")
    with pytest.raises(SplatError, match="SH"):
        rasterization(**dict(s, sh_degree=2))


def _load_icl_frame(i: int, factor: int = 4):
    from PIL import Image

    rgb = np.asarray(Image.open(ICL / "color" / f"{i:05d}.jpg").convert("RGB"), dtype=np.float32) / 255.0
    depth = np.asarray(Image.open(ICL / "depth" / f"{i:05d}.png"), dtype=np.float32) / 1000.0
    H, W = depth.shape[0] // factor, depth.shape[1] // factor
    rgb = rgb.reshape(H, factor, W, factor, 3).mean((1, 3))
    depth = depth[factor // 2 :: factor, factor // 2 :: factor]  # pixel (factor*v + factor/2)
    lines = (ICL / "trajectory.log").read_text().split("\n")
    c2w = np.array([[float(x) for x in lines[5 * i + 1 + r].split()] for r in range(4)])
    return rgb, depth, c2w


def test_real_rgbd_frame_reprojects_into_its_neighbour():
    """Gaussians from ICL-NUIM frame 0's depth and colour re-render frame 0 and frame 4 (GT poses)."""
    factor = 4
    rgb0, depth0, c2w0 = _load_icl_frame(0, factor)
    rgb4, _, c2w4 = _load_icl_frame(4, factor)
    H, W = depth0.shape
    v, u = np.nonzero(depth0 > 0)
    z = depth0[v, u]
    f, c = 525.0, 319.5  # original K, pixel-centre convention
    x = ((factor * u + factor // 2) - c) / f * z
    y = ((factor * v + factor // 2) - c + 80.0) / f * z  # cy = 239.5
    pts_cam = np.stack([x, y, z, np.ones_like(z)], 1)
    means = torch.tensor((pts_cam @ c2w0.T)[:, :3], dtype=torch.float32)
    n = means.shape[0]
    scale = torch.tensor(z * factor / f * 0.7, dtype=torch.float32)[:, None].repeat(1, 3)
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)
    colors = torch.tensor(rgb0[v, u])
    K = torch.tensor([[[f / factor, 0, (c + 0.5) / factor], [0, f / factor, (239.5 + 0.5) / factor], [0, 0, 1]]])
    viewmats = torch.tensor(np.linalg.inv(np.stack([c2w0, c2w4])), dtype=torch.float32)
    out, alpha, _ = rasterization(
        means, quats, scale, torch.full((n,), 0.95), colors, viewmats, K.repeat(2, 1, 1), W, H, render_mode="RGB+ED"
    )

    def psnr(a, b, mask):
        return -10 * math.log10(float(((a - b) ** 2)[mask].mean()))

    inner = np.zeros((H, W), bool)
    inner[8:-8, 8:-8] = True
    valid0 = inner & (depth0 > 0)
    img0, img4 = out[0, ..., :3].numpy(), out[1, ..., :3].numpy()
    assert psnr(img0, rgb0, valid0) > 24.0
    ed = out[0, ..., 3].numpy()
    assert np.median(np.abs(ed[valid0] - depth0[valid0]) / depth0[valid0]) < 0.01
    assert alpha[0, ..., 0].numpy()[valid0].mean() > 0.98
    # frame 4 (about 10 cm away) seen through the GT pose, versus frame 0's pose rendered as if it were 4
    p4 = psnr(img4, rgb4, inner)
    assert p4 > 20.0
    assert p4 > psnr(img0, rgb4, inner) + 3.0


def _fake_gsplat_backend(monkeypatch, build_error: str | None):
    """gsplat's extension module as a failed JIT build leaves it: _C None (no nvcc), or its import raising."""
    import sys
    import types

    import gsplat.cuda  # noqa: F401 - the real package; only its lazily built extension module is faked

    from splat import render as render_mod

    fake = types.ModuleType("gsplat.cuda._backend")
    if build_error is None:
        fake._C = None  # type: ignore[attr-defined]
    else:

        def fail(name: str):
            raise RuntimeError(build_error)

        fake.__getattr__ = fail  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", fake)
    monkeypatch.setattr(render_mod, "_GSPLAT_STATUS", [])
    monkeypatch.setattr(render_mod, "_CUDA_NOTICE", [])
    return render_mod


def test_gsplat_build_failure_is_one_line_and_auto_falls_back(monkeypatch, caplog):
    """CUDA_CHECKS item 1: without gsplat's kernels, "auto" on CUDA renders with the PyTorch rasterizer after one
    notice naming the cause, an explicit gsplat backend and MCMC on CUDA fail in one line (no compiler log)."""
    from splat.trainer import TrainConfig, make_strategy

    log = "Error building extension 'gsplat_cuda'\n[1/25] nvcc ... fatal error: cuda_runtime.h: No such file"
    render_mod = _fake_gsplat_backend(monkeypatch, log)
    why = render_mod.gsplat_unavailable()
    assert why == "building gsplat's CUDA kernels failed: RuntimeError: Error building extension 'gsplat_cuda'"
    with caplog.at_level("WARNING", logger="splat.render"):
        assert render_mod._auto_cuda_backend() == "torch"
        assert render_mod._auto_cuda_backend() == "torch"
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and why in notices[0] and "PyTorch rasterizer" in notices[0]
    with pytest.raises(SplatError, match="mcmc on CUDA needs gsplat's CUDA kernels: building") as e:
        make_strategy(TrainConfig(strategy="mcmc"), torch.device("cuda"))
    assert "\n" not in str(e.value)

    render_mod = _fake_gsplat_backend(monkeypatch, None)
    assert render_mod.gsplat_unavailable() == "gsplat found no CUDA toolkit (nvcc) to compile its kernels with"
    monkeypatch.setenv(render_mod.CUDA_BACKEND_ENV, "torch")
    monkeypatch.setattr(render_mod, "_GSPLAT_STATUS", ["unused"])
    assert render_mod._auto_cuda_backend() == "torch"
    monkeypatch.setenv(render_mod.CUDA_BACKEND_ENV, "cuda")
    with pytest.raises(SplatError, match="SPLAT_CUDA_BACKEND='cuda': use 'gsplat' or 'torch'"):
        render_mod._auto_cuda_backend()


def _cpu_and_cuda(seed: int) -> tuple[dict, dict]:
    """A 200-Gaussian scene, 2 cameras at 64x48: its leaves on the CPU, and a copy on CUDA (leaves of their own)."""
    cpu = _leaves(make_scene(seed, n=200, n_cams=2, width=64, height=48, dtype=torch.float32), PARAMS)
    gpu = {
        k: (v.detach().cuda().requires_grad_(True) if k in PARAMS else (v.cuda() if torch.is_tensor(v) else v))
        for k, v in cpu.items()
    }
    return cpu, gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_backend_on_cuda_matches_cpu():
    """The fallback when gsplat's kernels cannot be built: the PyTorch rasterizer on CUDA tensors."""
    cpu, gpu = _cpu_and_cuda(15)
    rgb_c, a_c, _ = rasterization(**cpu, render_mode="RGB+ED", backend="torch")
    rgb_g, a_g, _ = rasterization(**gpu, render_mode="RGB+ED", backend="torch")
    print(f"torch backend CUDA vs CPU: max |rgb| {(rgb_g.cpu() - rgb_c).abs().max():.2e}")
    torch.testing.assert_close(rgb_g.cpu(), rgb_c, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a_g.cpu(), a_c, atol=1e-5, rtol=1e-4)
    (rgb_c.sum() + a_c.sum()).backward()
    (rgb_g.sum() + a_g.sum()).backward()
    for k in PARAMS:
        torch.testing.assert_close(gpu[k].grad.cpu(), cpu[k].grad, atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat parity needs CUDA")
def test_parity_with_gsplat_on_cuda():
    cpu, gpu = _cpu_and_cuda(14)
    rgb_c, a_c, m_c = rasterization(**cpu, tile_size=16, render_mode="RGB+ED", backend="torch")
    rgb_g, a_g, m_g = rasterization(**gpu, tile_size=16, render_mode="RGB+ED", backend="gsplat", packed=False)
    torch.testing.assert_close(rgb_g.cpu(), rgb_c, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(a_g.cpu(), a_c, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(m_g["radii"].cpu(), m_c["radii"])
    (rgb_c.sum() + a_c.sum()).backward()
    (rgb_g.sum() + a_g.sum()).backward()
    print(
        f"gsplat vs torch backend: max |rgb| {(rgb_g.cpu() - rgb_c).abs().max():.2e}, "
        f"max |alpha| {(a_g.cpu() - a_c).abs().max():.2e}"
    )
    for k in PARAMS:
        ref = cpu[k].grad
        err = ((gpu[k].grad.cpu() - ref).abs().max() / ref.abs().max()).item()
        print(f"  grad {k}: max |diff| / max |grad| {err:.2e}")
        torch.testing.assert_close(gpu[k].grad.cpu() / ref.abs().max(), ref / ref.abs().max(), atol=2e-3, rtol=1e-2)
