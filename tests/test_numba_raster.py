"""The compiled CPU backend (splat.numba_raster behind splat.render.rasterization): values and gradients against the
brute-force reference and the PyTorch backend, gradcheck in float64, binning and meta identical to the PyTorch
backend's, results independent of the thread count, and the fallback to PyTorch (one notice) without numba.

(tests/test_render.py runs its whole suite on both CPU backends as well.)"""

from __future__ import annotations

import logging
import os
import sys

import pytest
import torch
from support.reference import render_reference
from test_render import PARAMS, _leaves, make_scene

import splat
from splat import render
from splat.errors import SplatError
from splat.render import rasterization

pytest.importorskip("numba")


def _grads(scene, names, backend, seed=7, **kwargs):
    """Outputs, input gradients of a random linear loss, and meta of one backend (or the reference)."""
    p = _leaves(scene, names)
    if backend == "reference":
        rgb, alpha = render_reference(**p, **kwargs)
        meta = None
    else:
        rgb, alpha, meta = rasterization(**p, backend=backend, **kwargs)
    g = torch.Generator().manual_seed(seed)
    w_rgb = torch.randn(rgb.shape, generator=g, dtype=rgb.dtype)
    w_alpha = torch.randn(alpha.shape, generator=g, dtype=rgb.dtype)
    if meta is not None:
        meta["means2d"].retain_grad()
    ((rgb * w_rgb).sum() + (alpha * w_alpha).sum()).backward()
    return rgb.detach(), alpha.detach(), {k: p[k].grad for k in names}, meta


def _assert_grads_close(ga, gb, atol, rtol):
    for k in gb:
        assert ga[k] is not None and torch.isfinite(ga[k]).all(), k
        scale = gb[k].abs().max().item() + 1e-12
        torch.testing.assert_close(ga[k] / scale, gb[k] / scale, atol=atol, rtol=rtol, msg=k)


def _saturated_scene():
    s = make_scene(2, n=60, n_cams=1, opacity=(0.9995, 0.99999), sh_degree=None)
    s["scales"] = s["scales"] * 3.0  # alpha hits the 0.999 clamp and pixels stop at T <= 1e-4
    return s


CASES = {
    "rgb_ed_sh_background_two_cameras": (
        lambda: dict(make_scene(0), backgrounds=torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=torch.float64)),
        PARAMS + ["viewmats", "backgrounds"],
        dict(render_mode="RGB+ED"),
    ),
    "depth_only": (lambda: make_scene(1, n_cams=1, sh_degree=None), PARAMS[:4], dict(render_mode="D")),
    "saturated_early_stop": (_saturated_scene, PARAMS, dict(render_mode="RGB+ED")),
    "antialiased_tile4": (lambda: make_scene(3, n_cams=1), PARAMS, dict(tile_size=4, rasterize_mode="antialiased")),
    "tile16_packed": (lambda: make_scene(10, n_cams=2), PARAMS, dict(tile_size=16, packed=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_float64_matches_reference_and_torch_backend(case):
    make, names, kwargs = CASES[case]
    scene = make()
    rgb, alpha, grads, meta = _grads(scene, names, "numba", **kwargs)
    ref_kwargs = {k: v for k, v in kwargs.items() if k != "packed"}
    rgb_r, alpha_r, grads_r, _ = _grads(scene, names, "reference", **ref_kwargs)
    rgb_t, alpha_t, grads_t, meta_t = _grads(scene, names, "torch", **kwargs)
    assert 0.05 < alpha.mean().item() < 0.999  # a real scene, neither empty nor fully saturated
    for other, other_alpha in ((rgb_r, alpha_r), (rgb_t, alpha_t)):
        torch.testing.assert_close(rgb, other, atol=1e-9, rtol=1e-7)
        torch.testing.assert_close(alpha, other_alpha, atol=1e-9, rtol=1e-7)
    _assert_grads_close(grads, grads_r, atol=1e-7, rtol=1e-6)
    _assert_grads_close(grads, grads_t, atol=1e-7, rtol=1e-6)
    # binning and meta are the PyTorch backend's, entry for entry
    for key in ("radii", "flatten_ids", "isect_offsets", "isect_ids", "tiles_per_gauss", "camera_ids", "gaussian_ids"):
        if meta_t[key] is None:
            assert meta[key] is None, key
        else:
            assert torch.equal(meta[key], meta_t[key]), key
    torch.testing.assert_close(meta["means2d"].grad, meta_t["means2d"].grad, atol=1e-10, rtol=1e-7)


def test_saturated_scene_exercises_clamp_and_stop():
    rgb, alpha, _, _ = _grads(_saturated_scene(), PARAMS, "numba", render_mode="RGB+ED")
    assert (alpha > 0.999).float().mean() > 0.3


def test_float32_matches_torch_backend_and_reference():
    scene = make_scene(20, n=600, n_cams=2, width=64, height=48, dtype=torch.float32)
    scene["Ks"] = scene["Ks"] * torch.tensor([1.6, 1.6, 1.0])[:, None]
    scene["Ks"][:, 2, 2] = 1.0
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    kwargs = dict(render_mode="RGB+ED", backgrounds=bg)
    names = PARAMS + ["viewmats"]
    rgb, alpha, grads, _ = _grads(scene, names, "numba", **kwargs)
    rgb_t, alpha_t, grads_t, _ = _grads(scene, names, "torch", **kwargs)
    assert rgb.dtype == torch.float32 and 0.3 < alpha.mean().item() < 0.99
    torch.testing.assert_close(rgb, rgb_t, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(alpha, alpha_t, atol=2e-4, rtol=1e-3)
    _assert_grads_close(grads, grads_t, atol=2e-3, rtol=1e-2)
    scene64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in scene.items()}
    rgb_r, alpha_r = render_reference(**scene64, **dict(kwargs, backgrounds=bg.double()))
    torch.testing.assert_close(rgb.double(), rgb_r, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(alpha.double(), alpha_r, atol=2e-4, rtol=1e-3)


def test_gradcheck_float64_tiny_scene():
    s = make_scene(6, n=6, n_cams=1, width=14, height=12, sh_degree=1)
    s["Ks"] = torch.tensor([[[16.0, 0, 7.0], [0, 16.0, 6.0], [0, 0, 1]]], dtype=torch.float64)
    s["scales"] = s["scales"] * 2
    bg = torch.tensor([[0.3, 0.6, 0.1]], dtype=torch.float64, requires_grad=True)
    inputs = tuple(s[k].clone().requires_grad_(True) for k in PARAMS + ["viewmats"]) + (bg,)

    def fn(means, quats, scales, opacities, colors, viewmats, backgrounds):
        rgb, alpha, _ = rasterization(
            means, quats, scales, opacities, colors, viewmats, s["Ks"], 14, 12, sh_degree=1,
            backgrounds=backgrounds, render_mode="RGB+ED", rasterize_mode="antialiased", backend="numba",
        )  # fmt: skip
        return rgb, alpha

    rgb, alpha = fn(*inputs)
    assert alpha.max() > 0.3  # the Gaussians are on screen
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_thread_count_does_not_change_results():
    """Each (tile, Gaussian) pair has its own gradient slot and each Gaussian sums its own slots: no races, so one
    and two threads give bit-identical images and gradients (also absgrad)."""
    scene = make_scene(21, n=2000, n_cams=2, width=96, height=72, dtype=torch.float32)
    runs = []
    for threads in (1, 2):
        p = _leaves(scene, PARAMS)
        rgb, alpha, meta = rasterization(**p, backend="numba", num_threads=threads, absgrad=True, render_mode="RGB+D")
        meta["means2d"].retain_grad()
        (rgb.square().sum() + alpha.sum()).backward()
        runs.append([rgb.detach(), meta["means2d"].grad, meta["means2d"].absgrad] + [p[k].grad for k in PARAMS])
    assert runs[0][2].abs().sum() > 0
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_fallback_to_torch_with_one_notice_when_numba_is_missing(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.delitem(sys.modules, "splat.numba_raster", raising=False)
    monkeypatch.delattr(splat, "numba_raster", raising=False)
    monkeypatch.setattr(render, "_NUMBA_READY", {})
    monkeypatch.setattr(render, "_NOTICE_GIVEN", [])
    monkeypatch.delenv(render.CPU_BACKEND_ENV, raising=False)
    scene = make_scene(22, n_cams=1, sh_degree=None)
    with caplog.at_level(logging.WARNING, logger="splat.render"):
        rgb1, _, meta = rasterization(**scene)
        rgb2, _, _ = rasterization(**scene)
    notices = [r for r in caplog.records if "PyTorch" in r.getMessage()]
    assert len(notices) == 1 and "numba" in notices[0].getMessage()
    rgb_t, _, _ = rasterization(**scene, backend="torch")
    assert torch.equal(rgb1, rgb_t) and torch.equal(rgb2, rgb_t) and rgb_t.abs().sum() > 0
    with pytest.raises(SplatError, match="'numba' unavailable"):
        rasterization(**scene, backend="numba")


def test_environment_variable_chooses_the_cpu_backend(monkeypatch):
    from splat import numba_raster

    calls = []
    real = numba_raster.rasterize_to_pixels
    monkeypatch.setattr(numba_raster, "rasterize_to_pixels", lambda *a, **k: calls.append(1) or real(*a, **k))
    scene = make_scene(23, n_cams=1, sh_degree=None)
    monkeypatch.delenv(render.CPU_BACKEND_ENV, raising=False)
    rasterization(**scene)
    assert calls == [1]  # the compiled backend is the default on the CPU
    monkeypatch.setenv(render.CPU_BACKEND_ENV, "torch")
    rasterization(**scene)
    assert calls == [1]
    monkeypatch.setenv(render.CPU_BACKEND_ENV, "cuda")
    with pytest.raises(SplatError, match="SPLAT_CPU_BACKEND"):
        rasterization(**scene)


def test_kernels_load_inside_no_grad(monkeypatch):
    """A first render under torch.no_grad() (the viewer's) still gets the compiled backend, not the fallback."""
    from splat import render as render_mod

    monkeypatch.setattr(render_mod, "_NUMBA_READY", {})
    with torch.no_grad():
        assert render_mod._numba_error(torch.float32) == ""


def test_default_threads_follow_torch():
    """No thread count given: the compiled backend uses torch's intra-op threads (train.cpu_threads and a Ray task's
    CPUs set those), so two scenes sharing the cores do not each take all of them; and rendering leaves torch's
    thread count as it was (numba's OpenMP layer shares torch's libgomp: before, train.cpu_threads=1 trained on
    both cores after the first render)."""
    import numba

    from splat.numba_raster import _Threads, compile_kernels, default_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert default_threads() == 1
        with _Threads(None) as t:
            assert t.n == 1 and numba.get_num_threads() == 1
        with _Threads(2):  # numba and torch share libgomp: torch's count must survive numba's
            pass
        compile_kernels(torch.float32)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert default_threads() == min(2, len(os.sched_getaffinity(0)), numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(before)


def test_tiles_are_dealt_to_workers_in_equal_shares():
    """numba's prange hands each thread one contiguous block, and a scene's tiles differ in work (the benchmark
    scene: 41k pairs in the top half of the tiles, 120k in the bottom one), so the rasterizer deals the tiles to its
    workers itself: every tile exactly once, and work shares within one tile's work of each other (LPT)."""
    import numpy as np

    from splat.numba_raster import _deal_tiles

    rng = np.random.default_rng(0)
    skewed = np.concatenate([rng.integers(0, 40, 600), rng.integers(100, 900, 600)]).astype(np.int64)
    for counts in (skewed, np.zeros(7, np.int64), np.array([5000, 1, 1, 1], np.int64)):
        for workers in (1, 2, 3, 8):
            tiles, bounds = _deal_tiles(counts, workers)
            assert bounds[0] == 0 and bounds[-1] == len(counts) and np.all(np.diff(bounds) >= 0)
            assert np.array_equal(np.sort(tiles), np.arange(len(counts)))
            loads = np.array([(counts[tiles[a:b]] + 8).sum() for a, b in zip(bounds[:-1], bounds[1:])])
            assert loads.max() - loads.min() <= counts.max() + 8
    halves = [(skewed[:600] + 8).sum(), (skewed[600:] + 8).sum()]
    tiles, bounds = _deal_tiles(skewed, 2)
    dealt = [(skewed[tiles[a:b]] + 8).sum() for a, b in zip(bounds[:-1], bounds[1:])]
    assert max(dealt) / min(dealt) < 1.01 < max(halves) / min(halves)


def test_nearest_first_is_a_stable_depth_sort():
    """bin_tiles orders splats by one int64 key sort; it must equal a stable argsort of the float depths, with
    ties (equal depths) in id order and negative depths before positive ones."""
    import numpy as np

    from splat.numba_raster import _nearest_first

    rng = np.random.default_rng(1)
    depths = rng.choice(np.array([-2.5, -0.5, -0.0, 0.0, 0.01, 1.0, 3.0, 1e30], np.float32), 5000)
    depths[::7] = rng.normal(size=depths[::7].shape).astype(np.float32) * 10
    visible = np.sort(rng.choice(5000, 3000, replace=False)).astype(np.int64)
    want = visible[torch.argsort(torch.from_numpy(depths[visible]), stable=True).numpy()]
    assert np.array_equal(_nearest_first(visible, depths.view(np.int32)), want)


def test_compiled_bins_equal_the_torch_bins_with_any_thread_count():
    """The compiled bin_tiles (parallel counting sort: one histogram per run of splats) lists the same pairs in the
    same front-to-back order as splat.cpu_raster.bin_tiles, with 1, 2 or 3 threads, two cameras, with and without
    the alpha test."""
    from splat.cpu_raster import bin_tiles as torch_bins
    from splat.cpu_raster import project_gaussians
    from splat.numba_raster import bin_tiles as numba_bins

    s = make_scene(8, n=3000, n_cams=2, width=96, height=72, dtype=torch.float32)
    radii, means2d, depths, conics, _ = project_gaussians(
        s["means"], s["quats"], s["scales"], s["viewmats"], s["Ks"], 96, 72
    )
    C, N = radii.shape
    cams = torch.arange(C).repeat_interleave(N)
    args = (means2d.reshape(-1, 2), radii.reshape(-1), depths.reshape(-1), cams, C, 96, 72, 8)
    opac = s["opacities"].expand(C, N).reshape(-1)
    for alpha_test in ({}, dict(conics=conics.reshape(-1, 3), opacities=opac)):
        want = torch_bins(*args, **alpha_test)
        assert want.flatten_ids.numel() > 10_000
        for threads in (1, 2, 3):
            got = numba_bins(*args, **alpha_test, threads=threads)
            for name in ("flatten_ids", "tile_start", "tile_count", "isect_tiles", "tiles_per_splat"):
                assert torch.equal(getattr(got, name), getattr(want, name)), (name, threads)
