"""Per-image affine colour correction (exposure and white balance), learned with the Gaussians.

Phone video changes exposure and white balance from frame to frame; a single radiance field cannot match
both a dark and a bright view of the same surface. As in graphdeco's 3DGS exposure compensation, each
training image gets a 3x4 affine map A = [M | b] applied to the rendered colour before the loss,
rgb' = M @ rgb + b, initialised to the identity and fitted by its own Adam (splat.trainer.Trainer; there the
mean correction over the training views is held at the identity, so the Gaussians keep the views' average
colour). Held-out views have no learned
map; they are scored raw and, separately, after the least-squares affine fit of `fit_affine` (the
"colour-corrected" metric of the literature: psnr_cc / ssim_cc in splat.evaluate).

Colours are float tensors [..., 3] in [0, 1] (linear in whatever space the images are; sRGB here).
"""

from __future__ import annotations

import torch


def identity(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n, 3, 4] float32 identity corrections (M = I, b = 0)."""
    eye = torch.eye(3, 4, dtype=torch.float32, device=device)
    return eye.expand(n, 3, 4).clone()


def apply_affine(rgb: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """rgb' = M @ rgb + b for rgb [..., 3] and one correction A [3, 4] = [M | b]; differentiable in both."""
    return rgb @ A[:, :3].T + A[:, 3]


def fit_affine(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The affine map A [3, 4] minimising || A(pred) - gt ||^2 over the pixels (ordinary least squares).

    Args:
        pred, gt: [H, W, 3] colours. mask: [H, W] bool pixels to fit on (None = all).
    Returns:
        [3, 4] float32 on pred's device; the identity when fewer than 16 pixels are given.
    """
    p = pred.reshape(-1, 3).double()
    g = gt.reshape(-1, 3).to(p)
    if mask is not None:
        m = mask.reshape(-1).to(p.device).bool()
        p, g = p[m], g[m]
    if len(p) < 16:
        return identity(1, pred.device)[0]
    X = torch.cat([p, torch.ones_like(p[:, :1])], dim=1)  # [P, 4]
    # Normal equations with a tiny ridge: a flat render (e.g. one colour) still gives a finite answer.
    XtX = X.T @ X + 1e-6 * len(X) * torch.eye(4, dtype=X.dtype, device=X.device)
    sol = torch.linalg.solve(XtX, X.T @ g)  # [4, 3]
    return sol.T.float().to(pred.device)
