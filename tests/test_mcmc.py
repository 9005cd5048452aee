"""gsplat's MCMC densification on the CPU (splat.mcmc_cpu + TrainConfig(strategy="mcmc")).

Covers: the relocation maths of 3DGS-MCMC eq. 9 (centre opacity and the integral of the composited
profile are preserved; agrees with a literal transcription of the double sum); the dispatcher sends CPU
tensors to our ops and anything else to gsplat's CUDA functions, unchanged; a short MCMC training on
real data (lego, 6 views, 64 px) fills the cap, relocates dead Gaussians and raises test PSNR; and an
interrupted MCMC run resumed from its checkpoint ends where an uninterrupted one ends.
"""

from __future__ import annotations

import math
import shutil

import gsplat
import gsplat.relocation
import gsplat.strategy.mcmc as gs_mcmc
import gsplat.strategy.ops as gs_ops
import numpy as np
import pytest
import torch
from gsplat.strategy import MCMCStrategy

from recon.artifacts.layout import RunPaths
from recon.stages import StageContext
from recon.stages.train import Config as TrainConfig
from recon.stages.train import run as run_stage
from splat.mcmc_cpu import (
    compute_relocation_torch,
    cpu_mcmc_ops,
    device_dispatch,
    install_cpu_mcmc_ops,
    is_installed,
    quat_scale_to_covar_preci_torch,
)
from splat.ply import read_gaussian_ply

MIN_OPACITY = MCMCStrategy().min_opacity


def run_train(paths: RunPaths, cfg: TrainConfig, callback=None) -> dict:
    return run_stage(StageContext(paths), cfg, callback=callback)


def _binoms() -> torch.Tensor:
    return MCMCStrategy().initialize_state()["binoms"]  # [51, 51], as training uses it


def _random_gaussians(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    o = torch.rand(n, generator=g) * 0.998 + 0.001  # (0, 1)
    s = torch.rand(n, 3, generator=g) * 2.0 + 0.05
    ratios = torch.randint(1, 51, (n,), generator=g)  # n = 1..50
    return o, s, ratios


# --------------------------------------------------------------------------------- relocation maths


def test_copies_composite_to_the_old_opacity():
    o, s, n = _random_gaussians(5000)
    new_o, new_s = compute_relocation_torch(o, s, n, _binoms())
    assert new_o.dtype == o.dtype and new_s.dtype == s.dtype and new_s.shape == s.shape
    composite = 1.0 - (1.0 - new_o.double()) ** n.double()
    np.testing.assert_allclose(composite.numpy(), o.double().numpy(), atol=1e-5)
    assert bool((new_o[n > 1] < o[n > 1]).all())
    assert bool((new_s[n > 1] < s[n > 1]).all())  # thinner copies: their composite is wider than one


def test_composited_profile_keeps_the_integral_of_the_old_one():
    """What eq. 9 preserves, derived: n copies of opacity a and 1-D profile g(x) = exp(-x^2 / 2 s'^2),
    alpha-composited (copy i sees transmittance (1 - a g)^(i-1)), give
        sum_{i=1..n} a g (1 - a g)^(i-1) = sum_i sum_{k=0..i-1} C(i-1,k) (-1)^k a^(k+1) g^(k+1),
    and g^(k+1) is a Gaussian of sigma s'/sqrt(k+1), whose integral is sqrt(2 pi) s' / sqrt(k+1). Setting
    the integral equal to that of the old profile o G(x; s), sqrt(2 pi) s o, gives eq. 9's scale. So eq. 9
    keeps (a) the centre opacity and (b) the 1-D integral of the profile along each axis, exactly; not the
    profile itself (the composite is flatter-topped), and not the 3-D integral (that would need
    (k+1)^(3/2)). Checked here by integrating the composited profile numerically on a fine grid."""
    o, s, n = _random_gaussians(60, seed=1)
    new_o, new_s = compute_relocation_torch(o.double(), s.double(), n, _binoms())
    for j in range(len(o)):
        oj, sj, nj, aj, s_new = float(o[j]), float(s[j, 0]), int(n[j]), float(new_o[j]), float(new_s[j, 0])
        x = np.linspace(-12 * sj, 12 * sj, 200_001)
        composite = 1.0 - (1.0 - aj * np.exp(-0.5 * (x / s_new) ** 2)) ** nj
        old = oj * np.exp(-0.5 * (x / sj) ** 2)
        assert np.trapz(composite, x) == pytest.approx(np.trapz(old, x), rel=1e-6), (oj, nj)
        assert composite[len(x) // 2] == pytest.approx(oj, abs=1e-9)  # centre opacity
        if nj > 1 and oj > 0.2:
            assert np.abs(composite - old).max() > 1e-3 * oj  # same integral, not the same profile
            vol_ratio = (
                (s_new / sj) ** 3
                * sum(math.comb(nj, m) * (-1) ** (m - 1) * aj**m / m**1.5 for m in range(1, nj + 1))
                / oj
            )
            assert abs(vol_ratio - 1.0) > 1e-3  # the 3-D integral is not what eq. 9 keeps


def test_matches_a_literal_transcription_of_eq9():
    o, s, n = _random_gaussians(40, seed=2)
    new_o, new_s = compute_relocation_torch(o, s, n, _binoms())
    for j in range(len(o)):
        oj, nj = float(o[j]), int(n[j])
        a = 1.0 - (1.0 - oj) ** (1.0 / nj)
        denom = sum(
            math.comb(i - 1, k) * (-1) ** k * a ** (k + 1) / math.sqrt(k + 1)
            for i in range(1, nj + 1)
            for k in range(i)
        )
        assert float(new_o[j]) == pytest.approx(a, rel=1e-6, abs=1e-7)
        np.testing.assert_allclose(new_s[j].numpy(), s[j].numpy() * oj / denom, rtol=1e-5)


def test_one_copy_is_unchanged_and_ratios_are_clamped():
    o, s, _ = _random_gaussians(500, seed=3)
    ones = torch.ones(500, dtype=torch.long)
    new_o, new_s = compute_relocation_torch(o, s, ones, _binoms())
    np.testing.assert_allclose(new_o.numpy(), o.numpy(), rtol=1e-6)
    np.testing.assert_allclose(new_s.numpy(), s.numpy(), rtol=1e-6)

    b = _binoms()
    ratios = torch.tensor([0, -3, 1, 51, 200], dtype=torch.int32)
    kept = ratios.clone()
    got_o, got_s = compute_relocation_torch(o[:5], s[:5], ratios, b)
    want_o, want_s = compute_relocation_torch(o[:5], s[:5], torch.tensor([1, 1, 1, 51, 51]), b)
    assert torch.equal(got_o, want_o) and torch.equal(got_s, want_s)
    assert torch.equal(ratios, kept)  # unlike gsplat's clamp_, the caller's tensor is not modified
    # Opacity -> 0 keeps the scale (the 0/0 limit), instead of NaN.
    z_o, z_s = compute_relocation_torch(torch.zeros(2), s[:2], torch.tensor([1, 7]), b)
    assert torch.equal(z_o, torch.zeros(2)) and torch.allclose(z_s, s[:2])


# --------------------------------------------------------------------------------- dispatch


def test_installed_ops_run_our_cpu_versions():
    install_cpu_mcmc_ops()
    assert is_installed()
    o, s, n = _random_gaussians(100, seed=4)
    b = _binoms()
    got = gs_ops.compute_relocation(opacities=o, scales=s, ratios=n, binoms=b)
    want = compute_relocation_torch(o, s, n, b)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    quats = torch.randn(100, 4, generator=torch.Generator().manual_seed(5))
    covars, precis = gs_ops.quat_scale_to_covar_preci(quats, s, compute_covar=True, compute_preci=False, triu=False)
    assert precis is None and covars.shape == (100, 3, 3)
    assert torch.equal(covars, quat_scale_to_covar_preci_torch(quats, s, True, False, False)[0])
    # Identity rotation: covariance diag(s^2); the quaternion needs no normalisation.
    c, _ = gs_ops.quat_scale_to_covar_preci(torch.tensor([[3.0, 0, 0, 0]]), s[:1], True, False, False)
    torch.testing.assert_close(c[0], torch.diag(s[0] ** 2))


def test_install_is_idempotent_and_cuda_keeps_gsplats_functions(monkeypatch):
    install_cpu_mcmc_ops()
    reloc, covar = gs_ops.compute_relocation, gs_ops.quat_scale_to_covar_preci
    assert install_cpu_mcmc_ops() == {}
    assert gs_ops.compute_relocation is reloc and gs_ops.quat_scale_to_covar_preci is covar
    # What a non-CPU tensor reaches is the very function object gsplat exports...
    assert reloc.__wrapped__ is gsplat.relocation.compute_relocation
    assert covar.__wrapped__ is gsplat.quat_scale_to_covar_preci
    assert reloc.__wrapped__.__module__ == "gsplat.relocation"
    # ...and calling with non-CPU tensors ("meta" stands in for CUDA, no GPU needed) ends in gsplat's
    # CUDA kernel launcher with gsplat's kernel names.
    kernels = []

    def fake_kernel(name):
        def launch(*args, **kwargs):
            kernels.append((name, args[0].device.type))
            return "sentinel-" + name, None

        return launch

    monkeypatch.setattr(gsplat.relocation, "_make_lazy_cuda_func", fake_kernel)
    monkeypatch.setattr(gsplat.cuda._wrapper, "_make_lazy_cuda_func", fake_kernel)
    meta = torch.device("meta")
    out = gs_ops.compute_relocation(
        opacities=torch.rand(4, device=meta),
        scales=torch.rand(4, 3, device=meta),
        ratios=torch.ones(4, dtype=torch.int32, device=meta),
        binoms=_binoms().to(meta),
    )
    assert out[0] == "sentinel-compute_relocation"
    out = gs_ops.quat_scale_to_covar_preci(
        torch.rand(4, 4, device=meta),
        torch.rand(4, 3, device=meta),
        compute_covar=True,
        compute_preci=False,
        triu=False,
    )
    assert out[0] == "sentinel-quat_scale_to_covar_preci_fwd"
    assert kernels == [("compute_relocation", "meta"), ("quat_scale_to_covar_preci_fwd", "meta")]


def test_dispatch_routes_by_device_and_context_manager_restores(monkeypatch):
    calls = []
    d = device_dispatch(
        lambda x, **kw: calls.append("cpu") or "ours", lambda x, **kw: calls.append("orig") or "orig", "x"
    )
    assert d(torch.zeros(1)) == "ours" and d(x=torch.zeros(1, device="meta")) == "orig"
    assert calls == ["cpu", "orig"]

    originals = (gsplat.relocation.compute_relocation, gsplat.quat_scale_to_covar_preci)
    monkeypatch.setattr(gs_ops, "compute_relocation", originals[0])  # as gsplat ships it
    monkeypatch.setattr(gs_ops, "quat_scale_to_covar_preci", originals[1])
    assert not is_installed()
    with cpu_mcmc_ops():
        assert is_installed()
    assert (gs_ops.compute_relocation, gs_ops.quat_scale_to_covar_preci) == originals


# --------------------------------------------------------------------------------- training on lego

N_INIT, CAP = 1000, 1150


def _mcmc_cfg(**kw) -> TrainConfig:
    base = dict(
        strategy="mcmc",
        init="random",
        num_random=N_INIT,
        max_gaussians=CAP,  # MCMC's cap_max
        depth_loss="none",
        background=(1.0, 1.0, 1.0),
        iterations=120,
        sh_degree=1,
        sh_degree_interval=50,
        refine_start=10,
        refine_every=10,  # refines at steps 20, 30, ..., 110: +5% per refine fills the cap by step 40
        refine_stop=120,
        checkpoint_every=0,
        video_frames=0,
        test_renders=False,
        eval_initial=True,
        device="cpu",
        cpu_threads=1,
        seed=0,
    )
    base.update(kw)
    return TrainConfig.preset("cpu", **base)


def _copy(run: RunPaths, dst) -> RunPaths:
    shutil.copytree(run.root, dst, ignore=shutil.ignore_patterns("splat", "metrics.json"))
    return RunPaths(dst)


def test_mcmc_training_on_cpu_fills_cap_relocates_and_learns(lego_sparse_run, tmp_path, monkeypatch):
    paths = _copy(lego_sparse_run(6, 64), tmp_path / "run")
    relocations, additions = [], []
    real_relocate, real_sample_add = gs_mcmc.relocate, gs_mcmc.sample_add

    def spy_relocate(params, optimizers, state, mask, binoms, min_opacity):
        dead = mask.nonzero(as_tuple=True)[0]
        before = {k: params[k].detach().clone() for k in ("means", "opacities")}
        assert bool((torch.sigmoid(before["opacities"][dead]) <= min_opacity).all())
        real_relocate(
            params=params, optimizers=optimizers, state=state, mask=mask, binoms=binoms, min_opacity=min_opacity
        )
        means = params["means"].detach()
        alive = torch.ones(len(means), dtype=torch.bool)
        alive[dead] = False
        # Every dead Gaussian now sits exactly on a live one (its sampled source) and is visible again.
        same = (means[dead][:, None, :] == means[alive][None, :, :]).all(-1).any(-1)
        relocations.append(
            {
                "n": len(dead),
                "moved": int((means[dead] != before["means"][dead]).any(-1).sum()),
                "on_live": int(same.sum()),
                "min_opacity_after": float(torch.sigmoid(params["opacities"].detach()[dead]).min()),
            }
        )

    def spy_sample_add(params, optimizers, state, n, binoms, min_opacity):
        count = len(params["means"])
        real_sample_add(params=params, optimizers=optimizers, state=state, n=n, binoms=binoms, min_opacity=min_opacity)
        additions.append((n, len(params["means"]) - count))

    monkeypatch.setattr(gs_mcmc, "relocate", spy_relocate)
    monkeypatch.setattr(gs_mcmc, "sample_add", spy_sample_add)
    counts = []
    s = run_train(paths, _mcmc_cfg(), callback=lambda step, row: counts.append(row["num_gaussians"]))

    # The Gaussian count grows by sample_add up to cap_max, never above, never down.
    assert counts[-1] == s["num_gaussians"] == CAP and max(counts) == CAP
    assert all(a <= b for a, b in zip(counts, counts[1:]))
    assert [added for n, added in additions] == [n for n, added in additions] and sum(
        n for n, _ in additions
    ) == CAP - N_INIT
    # Dead Gaussians were relocated (measured: at each refine of steps 50-110, 36 Gaussians in all).
    assert len(relocations) >= 2 and sum(r["n"] for r in relocations) >= 10, relocations
    for r in relocations:
        assert r["moved"] == r["on_live"] == r["n"], r
        assert r["min_opacity_after"] >= MIN_OPACITY * 0.999, r
    # Measured: 7.59 dB initial -> 16.07 dB (seeds 1-3: +8.5, +8.1, +8.2 dB) on 5 held-out views.
    assert s["psnr"] > s["initial_psnr"] + 5.0, s
    assert s["strategy"] == "mcmc"
    assert np.isfinite(read_gaussian_ply(paths.gaussians_ply)["means"]).all()


def test_mcmc_resume_after_interruption_matches_uninterrupted(lego_sparse_run, tmp_path, interrupt_and_resume):
    """The checkpoint keeps MCMC's state (its binomial table) and the RNGs its sampling and noise use."""
    cfg = _mcmc_cfg(
        iterations=40,
        checkpoint_every=20,
        refine_start=5,
        refine_every=5,
        refine_stop=40,
        num_random=300,
        max_gaussians=360,
        eval_initial=False,
    )
    full = _copy(lego_sparse_run(6, 64), tmp_path / "full")
    cut = _copy(lego_sparse_run(6, 64), tmp_path / "cut")
    ck, resumed, a, b = interrupt_and_resume(full, cut, cfg, kill_at=30)
    assert ck["step"] == 20 and torch.equal(ck["strategy_state"]["binoms"], _binoms())
    assert len(a["means"]) == len(b["means"]) == resumed["num_gaussians"] == 360  # sample_add ran after step 20 too
