"""CPU versions of the two CUDA-only ops behind gsplat's MCMCStrategy, and a device dispatcher.

gsplat 1.4.0's `MCMCStrategy` is plain torch except for two calls made from `gsplat.strategy.ops`:
`gsplat.relocation.compute_relocation` (CUDA kernel "compute_relocation", used by `relocate` and
`sample_add`) and `gsplat.quat_scale_to_covar_preci` (CUDA kernel, used by `inject_noise_to_position`).
gsplat ships no CPU kernel for either, so:

- `compute_relocation_torch` is hand-written here from the 3DGS-MCMC paper (Kheradmand et al. 2024,
  arXiv 2404.09591, eq. 9), vectorised over Gaussians;
- the covariance comes from gsplat's own readable reference, `gsplat.cuda._torch_impl`.

`install_cpu_mcmc_ops()` replaces those two names in `gsplat.strategy.ops` (where they were imported
by name) with thin dispatchers: CPU tensors go to the functions above, any other device to the
original gsplat function object, untouched. Installing is idempotent; `cpu_mcmc_ops()` is the same as
a context manager that restores what it replaced.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

_FLAG = "_splat_cpu_dispatch"


def relocation_coefficients(binoms: Tensor) -> Tensor:
    """Polynomial coefficients of eq. 9's denominator for every copy count n = 1..n_max.

    Eq. 9's denominator is  D(n, a) = sum_{i=1..n} sum_{k=0..i-1} C(i-1,k) (-1)^k a^(k+1) / sqrt(k+1),
    a polynomial in the new opacity a. Swapping the sums, D(n, a) = sum_k A[n-1, k] a^(k+1) with
    A[n-1, k] = (-1)^k / sqrt(k+1) * sum_{i=k+1..n} C(i-1, k)  (which equals (-1)^k C(n, k+1) / sqrt(k+1)).

    Args:
        binoms: [n_max, n_max] table with binoms[m, k] = C(m, k) for k <= m (entries above the
            diagonal are ignored), as `MCMCStrategy.initialize_state()` builds it.
    Returns:
        [n_max, n_max] float64: row n-1 holds the coefficients of a^1 .. a^n_max for n copies.
    """
    B = torch.tril(binoms.to(torch.float64))  # B[i-1, k] = C(i-1, k), zero for k > i-1
    k = torch.arange(B.shape[1], dtype=torch.float64, device=B.device)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return B.cumsum(dim=0) * (sign / torch.sqrt(k + 1.0))


def compute_relocation_torch(
    opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor
) -> tuple[Tensor, Tensor]:
    """Opacity and scale for each of n Gaussians that replace one (3DGS-MCMC eq. 9), in pure torch.

    Same arguments and results as `gsplat.relocation.compute_relocation` (which is CUDA-only).
    A Gaussian of opacity o and scale s becomes n identical copies with
        o_new = 1 - (1 - o)^(1/n)   (n copies alpha-composited at the centre give back o), and
        s_new = s * o / sum_{i=1..n} sum_{k=0..i-1} C(i-1,k) (-1)^k o_new^(k+1) / sqrt(k+1)
    (the n-fold composited 1-D profile has the same integral along each axis as o * G(x; s)).

    Args:
        opacities: [N] activated opacities in [0, 1].
        scales: [N, 3] activated scales (sigma, scene units).
        ratios: [N] integer copy counts n, clamped to [1, n_max] (the input is not modified).
        binoms: [n_max, n_max] binomial table (see `relocation_coefficients`).
    Returns:
        new_opacities [N] and new_scales [N, 3], in the dtypes of the inputs. The polynomial is
        evaluated in float64: its alternating terms cancel (up to ~1e3-fold at n = 51).
    """
    n_max = binoms.shape[0]
    N = opacities.shape[0]
    if opacities.shape != (N,) or scales.shape != (N, 3) or ratios.shape != (N,):
        raise ValueError(
            f"expected opacities [N], scales [N,3], ratios [N]; got {tuple(opacities.shape)}, "
            f"{tuple(scales.shape)}, {tuple(ratios.shape)}"
        )
    n = ratios.clamp(min=1, max=n_max).long()
    o = opacities.to(torch.float64)
    o_new = 1.0 - torch.pow(1.0 - o, 1.0 / n.to(torch.float64))

    coef = relocation_coefficients(binoms.to(o.device))  # [n_max, n_max]
    rows = n - 1
    denom = torch.zeros_like(o_new)
    for k in range(n_max - 1, -1, -1):  # Horner over the polynomial degree (vectorised over Gaussians)
        denom = (denom + coef[rows, k]) * o_new
    # o -> 0 gives 0/0; its limit is 1 (o_new ~ o/n, denominator ~ n * o_new = o): keep the scale.
    ratio = torch.where(denom > 0, o / denom.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(o))
    new_scales = (scales.to(torch.float64) * ratio[:, None]).to(scales.dtype)
    return o_new.to(opacities.dtype), new_scales


def quat_scale_to_covar_preci_torch(
    quats: Tensor, scales: Tensor, compute_covar: bool = True, compute_preci: bool = True, triu: bool = False
):
    """gsplat's PyTorch reference of `quat_scale_to_covar_preci` (quats [N,4] wxyz, scales [N,3])."""
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    return _quat_scale_to_covar_preci(quats, scales, compute_covar, compute_preci, triu)


def device_dispatch(cpu_impl: Callable, original: Callable, tensor_arg: str) -> Callable:
    """A function that calls `cpu_impl` when the tensor argument `tensor_arg` (or the first positional
    argument) is on the CPU, and `original` otherwise (CUDA keeps gsplat's kernels).

    The result carries `__wrapped__` (= original) and `cpu_impl` for inspection.
    """

    @functools.wraps(original)
    def dispatcher(*args, **kwargs):
        x = kwargs[tensor_arg] if tensor_arg in kwargs else args[0]
        if x.device.type == "cpu":
            return cpu_impl(*args, **kwargs)
        return original(*args, **kwargs)

    dispatcher.__module__ = __name__  # it lives here, whatever `original`'s module is
    dispatcher.cpu_impl = cpu_impl  # type: ignore[attr-defined]
    setattr(dispatcher, _FLAG, True)
    return dispatcher


# name in gsplat.strategy.ops -> (CPU implementation, name of its first tensor argument)
_PATCHES: dict[str, tuple[Callable, str]] = {
    "compute_relocation": (compute_relocation_torch, "opacities"),
    "quat_scale_to_covar_preci": (quat_scale_to_covar_preci_torch, "quats"),
}


def is_installed() -> bool:
    """True when `gsplat.strategy.ops` currently routes both ops through our dispatchers."""
    import gsplat.strategy.ops as ops

    return all(getattr(getattr(ops, name), _FLAG, False) for name in _PATCHES)


def install_cpu_mcmc_ops() -> dict[str, Callable]:
    """Make gsplat's MCMC ops run on CPU tensors (idempotent; CUDA tensors still reach gsplat's kernels).

    Returns:
        {name: the function it replaced} for the names it patched now (empty if already installed).
    """
    import gsplat.strategy.ops as ops

    replaced = {}
    for name, (cpu_impl, arg) in _PATCHES.items():
        current = getattr(ops, name)
        if getattr(current, _FLAG, False):
            continue
        setattr(ops, name, device_dispatch(cpu_impl, current, arg))
        replaced[name] = current
    return replaced


@contextlib.contextmanager
def cpu_mcmc_ops() -> Iterator[None]:
    """Context manager form of `install_cpu_mcmc_ops`: restores what it replaced on exit."""
    import gsplat.strategy.ops as ops

    replaced = install_cpu_mcmc_ops()
    try:
        yield
    finally:
        for name, fn in replaced.items():
            setattr(ops, name, fn)
