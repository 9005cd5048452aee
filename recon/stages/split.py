"""Stage `split`: train / test / depth-prior frames -> RUN/split.json."""

from __future__ import annotations

from typing import Any

from recon.artifacts import CameraSet, FramesIndex, RunPaths, Split
from recon.split import SplitConfig as Config
from recon.split import make_split
from recon.stages import StageContext


def _source_names(paths: RunPaths, cams: CameraSet) -> list[list[str]]:
    """Other names a split file may use for each frame: the source image name and the frames/ file."""
    out: list[list[str]] = [[] for _ in range(len(cams))]
    if paths.frames_json.exists():
        by_src = FramesIndex.load(paths.frames_json).by_source_index()
        for i, s in enumerate(cams.source_index):
            f = by_src.get(int(s))
            if f:
                out[i] = [n for n in (f.get("source_name"), f.get("file")) if n]
    return out


def run(ctx: StageContext, cfg: Config) -> dict[str, Any]:
    cams = CameraSet.load(ctx.paths.cameras_json)
    d = make_split(len(cams), cams.files, cfg, cams.registered, aliases=_source_names(ctx.paths, cams))
    split = Split(train=d["train"], test=d["test"], prior=d["prior"], protocol=d["protocol"])
    split.validate(len(cams), cams.registered).save(ctx.paths.split_json)
    return {
        "train views": len(split.train),
        "test views": len(split.test),
        "prior frames": len(split.prior),
        "protocol": split.protocol,
    }
