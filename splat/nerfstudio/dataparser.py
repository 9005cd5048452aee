"""Reading a DVD-Splat run (RUN/transforms.json) into nerfstudio: dataparser and dataset.

The stock nerfstudio dataparser takes the depth PNG scale from its command-line config only; ours
reads `depth_unit_scale_factor` from transforms.json (where `recon export nerfstudio` records it), so
depth reaches the model in scene units times nerfstudio's pose scale without the user repeating it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.utils.data_utils import get_depth_image_from_path

from splat.errors import SplatError


@dataclass
class DVDSplatDataParserConfig(NerfstudioDataParserConfig):
    """nerfstudio's transforms.json parser, with the run's fused cloud and depth scale on by default."""

    _target: type = field(default_factory=lambda: DVDSplatDataParser)
    load_3D_points: bool = True
    """Initialise the Gaussians from transforms.json's `ply_file_path` (the run's points/init.ply)."""
    depth_unit_scale_factor: float | None = None  # type: ignore[assignment]
    """Depth PNG value x this = scene units. None: read it from transforms.json (1e-3 if absent)."""


class DVDSplatDataParser(Nerfstudio):
    config: DVDSplatDataParserConfig

    # nerfstudio's base declares **kwargs that neither its Nerfstudio parser nor this one takes
    def _generate_dataparser_outputs(self, split: str = "train"):  # type: ignore[override]
        transforms = self.config.data if self.config.data.suffix == ".json" else self.config.data / "transforms.json"
        if not transforms.exists():
            raise SplatError(f"{transforms} not found: export the run first (recon export nerfstudio RUN)")
        meta = json.loads(transforms.read_text())
        factor = self.config.depth_unit_scale_factor
        if factor is None:
            factor = float(meta.get("depth_unit_scale_factor", 1e-3))
        # The parent reads the factor from its config; give it the resolved value for this call.
        configured = self.config.depth_unit_scale_factor
        self.config.depth_unit_scale_factor = factor
        try:
            return super()._generate_dataparser_outputs(split)
        finally:
            self.config.depth_unit_scale_factor = configured


class DVDSplatDataset(InputDataset):
    """Images plus, where the export has them, depth maps as `depth_image` [H, W, 1] float32.

    Depth is in nerfstudio world units (scene units x dataparser scale); 0 marks pixels without depth.
    Unlike nerfstudio's DepthDataset it never generates pseudo-depth when the export has none.
    """

    exclude_batch_keys_from_device = InputDataset.exclude_batch_keys_from_device + ["depth_image"]

    def __init__(self, dataparser_outputs, scale_factor: float = 1.0):
        super().__init__(dataparser_outputs, scale_factor)
        self.depth_filenames = self.metadata.get("depth_filenames")
        self.depth_unit_scale_factor = float(self.metadata.get("depth_unit_scale_factor", 1e-3))

    def get_metadata(self, data: dict) -> dict:
        if not self.depth_filenames:
            return {}
        idx = data["image_idx"]
        cameras = self._dataparser_outputs.cameras
        depth = get_depth_image_from_path(
            filepath=self.depth_filenames[idx],
            height=int(cameras.height[idx]),
            width=int(cameras.width[idx]),
            scale_factor=self.depth_unit_scale_factor * self._dataparser_outputs.dataparser_scale,
        )
        return {"depth_image": depth}
