"""DVDSplatModel: nerfstudio's splatfacto with the project's renderer, depth prior and fused-cloud init.

Differences from `SplatfactoModel`:
- rendering goes through `splat.render.rasterization` (gsplat on CUDA, the project's PyTorch
  rasterizer on CPU), so `ns-train dvd-splat --machine.device-type cpu` trains without CUDA kernels;
- a depth loss against the run's aligned depth (`depth_image` from the export's 16-bit PNGs), with
  the same options and defaults as `splat.trainer.TrainConfig`;
- the Gaussians start from the run's fused cloud (transforms.json `ply_file_path`, loaded by the
  dataparser as seed points), exactly like splatfacto's SfM-point initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig

from splat import losses
from splat.nerfstudio.cpu_patch import splatfacto_construction
from splat.render import rasterization
from splat.trainer import TrainConfig

if TYPE_CHECKING:
    from nerfstudio.cameras.rays import RayBundle

_TRAIN_DEFAULTS = TrainConfig()


def viewmats_from_nerfstudio(c2w: torch.Tensor) -> torch.Tensor:
    """nerfstudio camera-to-world [B, 3, 4] (OpenGL camera axes) -> world-to-camera [B, 4, 4] (OpenCV axes).

    Flipping the camera's y and z axes turns OpenGL axes into OpenCV ones; the rigid inverse is
    [R^T | -R^T t]. Units are those of the poses (nerfstudio world units).
    """
    R = c2w[:, :3, :3] * c2w.new_tensor([1.0, -1.0, -1.0])
    t = c2w[:, :3, 3:4]
    w2c = torch.zeros(c2w.shape[0], 4, 4, dtype=c2w.dtype, device=c2w.device)
    w2c[:, :3, :3] = R.transpose(1, 2)
    w2c[:, :3, 3:4] = -R.transpose(1, 2) @ t
    w2c[:, 3, 3] = 1.0
    return w2c


def downscale_depth(depth: torch.Tensor, factor: int) -> torch.Tensor:
    """Average depth [H, W, 1] over factor x factor blocks, counting only valid (> 0) pixels.

    Returns [H // factor, W // factor, 1]; a block without any valid pixel is 0 (invalid).
    """
    if factor <= 1:
        return depth
    d = depth.permute(2, 0, 1)[None]
    valid = (d > 0).to(d.dtype)
    total = F.avg_pool2d(d * valid, factor)
    count = F.avg_pool2d(valid, factor)
    out = torch.where(count > 0, total / count.clamp_min(1e-12), torch.zeros_like(total))
    return out[0].permute(1, 2, 0)


@dataclass
class DVDSplatModelConfig(SplatfactoModelConfig):
    """splatfacto's settings plus the DVD-Splat depth prior (defaults as in `splat.trainer.TrainConfig`)."""

    _target: type = field(default_factory=lambda: DVDSplatModel)
    depth_loss: Literal["none", "l1-inverse", "pearson", "patch-pearson"] = _TRAIN_DEFAULTS.depth_loss
    """Depth-prior loss against the run's aligned depth: 'l1-inverse' (L1 on inverse depth),
    'pearson' (1 - correlation of inverse depth, scale-free), 'patch-pearson' (that correlation per 16x16 patch)
    or 'none' (see splat.losses)."""
    depth_weight: float = _TRAIN_DEFAULTS.depth_weight
    """Weight of the depth loss at step 0."""
    depth_weight_final: float = _TRAIN_DEFAULTS.depth_weight_final
    """Depth weight at the last step as a fraction of depth_weight (exponential decay; 1 = constant)."""
    depth_min_alpha: float = 0.5
    """The depth loss uses pixels whose rendered opacity exceeds this (as splat.trainer does)."""
    output_depth_during_training: bool = True
    """Render expected depth while training (the depth loss needs it)."""


class DVDSplatModel(SplatfactoModel):
    """Gaussian Splatting with a video-depth prior (see module docstring)."""

    config: DVDSplatModelConfig

    def populate_modules(self) -> None:
        with splatfacto_construction():
            super().populate_modules()
        self.max_num_iterations: int | None = None

    def get_training_callbacks(self, training_callback_attributes):
        trainer_config = getattr(training_callback_attributes.trainer, "config", None)
        self.max_num_iterations = getattr(trainer_config, "max_num_iterations", None)
        return super().get_training_callbacks(training_callback_attributes)

    def get_outputs(self, camera: RayBundle | Cameras) -> dict[str, torch.Tensor | list]:
        """Render one camera: rgb [H, W, 3], depth [H, W, 1] (nerfstudio world units), accumulation [H, W, 1]."""
        if not isinstance(camera, Cameras):
            return {}
        if self.training:
            assert camera.shape[0] == 1, "splatfacto trains on one camera at a time"
            c2w = self.camera_optimizer.apply_to_camera(camera)
        else:
            c2w = camera.camera_to_worlds

        params = self._cropped_params()
        if params is None:
            return self.get_empty_outputs(int(camera.width.item()), int(camera.height.item()), self.background_color)
        Ks, width, height = self._intrinsics(camera)
        self.last_size = (height, width)

        colors = torch.cat((params["features_dc"][:, None, :], params["features_rest"]), dim=1)
        if self.config.sh_degree > 0:
            sh_degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:
            colors, sh_degree = torch.sigmoid(colors).squeeze(1), None
        with_depth = self.config.output_depth_during_training or not self.training
        render, alpha, self.info = rasterization(
            means=params["means"],
            quats=params["quats"],
            scales=torch.exp(params["scales"]),
            opacities=torch.sigmoid(params["opacities"]).squeeze(-1),
            colors=colors,
            viewmats=viewmats_from_nerfstudio(c2w.to(self.device)),
            Ks=Ks,
            width=width,
            height=height,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode="RGB+ED" if with_depth else "RGB",
            sh_degree=sh_degree,
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
        )
        if self.training:
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )

        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        if self.config.use_bilateral_grid and self.training and camera.metadata and "cam_idx" in camera.metadata:
            rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], height, width)
        depth = None
        if with_depth:
            depth = render[..., 3:4]
            depth = torch.where(alpha > 0, depth, depth.detach().max()).squeeze(0)
        if background.shape[0] == 3 and not self.training:
            background = background.expand(height, width, 3)
        return {"rgb": rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0), "background": background}

    def _cropped_params(self) -> dict[str, torch.Tensor] | None:
        """The Gaussians' parameters, outside training only those inside the crop box; None when it holds none."""
        params = {
            k: self.gauss_params[k] for k in ("means", "scales", "quats", "features_dc", "features_rest", "opacities")
        }
        if self.crop_box is not None and not self.training:
            inside = self.crop_box.within(params["means"]).squeeze()
            if inside.sum() == 0:
                return None
            params = {k: v[inside] for k, v in params.items()}
        return params

    def _intrinsics(self, camera: Cameras) -> tuple[torch.Tensor, int, int]:
        """Ks [1, 3, 3], width, height of `camera` at the current training downscale (the camera is left as given)."""
        scale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale)
        Ks = camera.get_intrinsics_matrices().to(self.device)
        width, height = int(camera.width.item()), int(camera.height.item())
        camera.rescale_output_resolution(scale)
        return Ks, width, height

    def depth_loss_weight(self) -> float:
        """Depth-loss weight at the current step (splat.losses schedule over the run's iterations)."""
        total = self.max_num_iterations or self.config.stop_split_at
        return losses.depth_weight_at(self.step, self.config.depth_weight, self.config.depth_weight_final, total)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, torch.Tensor]:
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        use_depth = self.config.depth_loss != "none" and self.config.depth_weight > 0
        if self.training and use_depth and "depth_image" in batch and outputs["depth"] is not None:
            pred = outputs["depth"][..., 0]
            prior = downscale_depth(batch["depth_image"].to(self.device), self._get_downscale_factor())[..., 0]
            prior = prior[: pred.shape[0], : pred.shape[1]]
            mask = outputs["accumulation"][..., 0].detach() > self.config.depth_min_alpha
            loss = losses.DEPTH_LOSSES[self.config.depth_loss](pred, prior, mask)
            loss_dict["depth_loss"] = self.depth_loss_weight() * loss
        return loss_dict
