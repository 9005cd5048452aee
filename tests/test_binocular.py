"""Self-supervised stereo consistency (TrainConfig.binocular_weight, as Binocular3DGS): the warp's convention
against gsplat's own renders of a tilted textured plane, and the Trainer's use of it on the lego views."""

from __future__ import annotations

import numpy as np
import torch

from splat.losses import binocular_loss, warp_from_shifted_view
from splat.trainer import render

F_PX = 80.0


def _plane() -> dict[str, torch.Tensor]:
    """A textured plane z = 3 + 0.3 x (scene units) of 100 x 75 small Gaussians, random colours, filling the view
    of the identity camera."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.meshgrid(torch.linspace(-3.2, 3.2, 100), torch.linspace(-2.4, 2.4, 75), indexing="xy")
    means = torch.stack([x.flatten(), y.flatten(), 3.0 + 0.3 * x.flatten()], dim=-1)
    k = len(means)
    return {
        "means": means,
        "scales": torch.full((k, 3), float(np.log(0.05))),
        "quats": torch.tensor([1.0, 0, 0, 0]).expand(k, 4).clone(),
        "opacities": torch.full((k,), 4.0),
        "sh0": torch.rand(k, 1, 3, generator=g) * 2 - 1,
        "shN": torch.zeros(k, 0, 3),
    }


def test_warp_of_a_constant_disparity_is_a_shift():
    img = torch.rand(20, 30, 3, generator=torch.Generator().manual_seed(1))
    warped, inside = warp_from_shifted_view(img, torch.full((20, 30), 3.0))
    torch.testing.assert_close(warped[:, 3:], img[:, :-3])
    assert not inside[:, :3].any() and inside[:, 3:].all()


def test_binocular_loss_is_small_for_consistent_geometry_and_not_for_the_wrong_sign():
    """Render the plane from the identity camera and from the camera moved t along x; the moved render warped back
    by the reference render's depth reproduces the reference render (the loss is the warp error alone), and the
    opposite move (a sign error in the convention) does not."""
    p = _plane()
    K = torch.tensor([[F_PX, 0, 60.0], [0, F_PX, 45.0], [0, 0, 1]])
    bg = torch.zeros(3)
    ref, depth, alpha, _ = render(p, torch.eye(4), K, 120, 90, 0, bg)
    assert float((alpha > 0.5).float().mean()) > 0.8 and float(depth[alpha > 0.5].std()) > 0.3  # tilted, covered
    t = 4.0 * 3.0 / F_PX  # ~4 px of disparity at z = 3
    moved = torch.eye(4)
    moved[0, 3] = -t  # camera centre at +t along x
    shifted, _, _, _ = render(p, moved, K, 120, 90, 0, bg)
    right = float(binocular_loss(shifted, depth, alpha, ref, F_PX * t, smooth=0.0))
    wrong = float(binocular_loss(shifted, depth, alpha, ref, -F_PX * t, smooth=0.0))
    unwarped = float((shifted - ref).abs().mean(dim=-1)[alpha > 0.5].mean())
    print(f"\nwarp error {right:.4f}, wrong sign {wrong:.4f}, no warp {unwarped:.4f}")
    assert right < 0.1 * unwarped and wrong > 10 * right, (right, wrong, unwarped)
