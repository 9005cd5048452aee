"""The run directory's files, one class (or reader) per format, each saving, loading and validating it.

Only recon/ knows these files; depth/ and splat/ take and return the arrays inside them.

| file | class / reader |
|---|---|
| (layout of every path) | `RunPaths` |
| frames.json, frames/*.png | `FramesIndex`, `read_rgb`, `read_rgb_stack` |
| cameras.json | `CameraSet` |
| split.json | `Split` |
| depth/disparity.npz | `DisparityMaps` |
| depth/aligned.npz | `AlignedDepth` |
| points/init.ply | `PointCloud` |
| splat/gaussians.ply | `GaussiansFile` |
| splat/checkpoint.pt | `Checkpoint` |
| mesh/mesh.ply | `MeshFile` |
| metrics.json | `Metrics` |
| depth/alignment.json, depth/windows.json | `read_json_object` |
| splat/train_log.jsonl | `read_jsonl` / `write_jsonl` |
"""

from recon.artifacts.cameras import CameraSet
from recon.artifacts.depth import AlignedDepth, DisparityMaps
from recon.artifacts.frames import FramesIndex, read_rgb, read_rgb_stack
from recon.artifacts.layout import RunPaths
from recon.artifacts.records import Metrics, read_json_object, read_jsonl, write_jsonl
from recon.artifacts.splats import Checkpoint, GaussiansFile, MeshFile, PointCloud
from recon.artifacts.split import Split

__all__ = [
    "AlignedDepth",
    "CameraSet",
    "Checkpoint",
    "DisparityMaps",
    "FramesIndex",
    "GaussiansFile",
    "MeshFile",
    "Metrics",
    "PointCloud",
    "RunPaths",
    "Split",
    "read_json_object",
    "read_jsonl",
    "read_rgb",
    "read_rgb_stack",
    "write_jsonl",
]
