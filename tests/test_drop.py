"""Random dropping of Gaussians while training (TrainConfig.drop_rate, as DropGaussian): the schedule, the
opacity compensation, and that a render with nothing dropped is the plain render."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from splat.errors import SplatError
from splat.trainer import TrainConfig, Trainer, render


def _params(n: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.6, 0.4, 0.2]) + torch.tensor([0.0, 0.0, 3.0])
    return {
        "means": means,
        "scales": torch.full((n, 3), -2.5),
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        "opacities": torch.full((n,), 0.5),
        "sh0": torch.rand(n, 1, 3, generator=g),
        "shN": torch.zeros(n, 0, 3),
    }


def test_drop_schedule_and_compensation():
    """The rate grows linearly to drop_rate; dropped Gaussians get 0, the others 1 / (1 - rate): the expected
    opacity of every Gaussian is unchanged."""
    torch.manual_seed(0)
    n = 200_000
    fake = SimpleNamespace(cfg=TrainConfig(drop_rate=0.2, iterations=100), params={"means": torch.zeros(n, 3)})
    last = Trainer._drop_scale(fake, 99)  # type: ignore[arg-type]
    half = Trainer._drop_scale(fake, 49)  # type: ignore[arg-type]
    assert last is not None and half is not None
    assert abs(float((last == 0).float().mean()) - 0.2) < 0.005 and abs(float((half == 0).float().mean()) - 0.1) < 0.005
    assert torch.allclose(last[last > 0], torch.tensor(1 / 0.8)) and abs(float(last.mean()) - 1.0) < 0.01
    assert Trainer._drop_scale(SimpleNamespace(cfg=TrainConfig(), params=fake.params), 99) is None  # type: ignore[arg-type]


def test_render_with_nothing_dropped_is_the_plain_render_and_all_dropped_is_background():
    p = _params()
    K = torch.tensor([[60.0, 0, 40], [0, 60.0, 30], [0, 0, 1]])
    bg = torch.tensor([0.2, 0.4, 0.6])
    plain = render(p, torch.eye(4), K, 80, 60, 0, bg)
    ones = render(p, torch.eye(4), K, 80, 60, 0, bg, torch.ones(len(p["means"])))
    none = render(p, torch.eye(4), K, 80, 60, 0, bg, torch.zeros(len(p["means"])))
    assert float(plain[2].max()) > 0.5  # the scene covers the image
    torch.testing.assert_close(ones[0], plain[0])
    torch.testing.assert_close(none[0], bg.expand(60, 80, 3))


def test_drop_rate_is_range_checked():
    with pytest.raises(SplatError, match="drop_rate"):
        TrainConfig(drop_rate=1.0).validate()
