"""Run orchestration: stages in order, each skipped when already done with the same inputs.

Stages (in order): frames -> poses -> split -> depth -> align -> fuse -> train -> export -> report.
Asking for one stage runs the stages before it that are not done yet. Each stage's fingerprint is
made of its own config, the input, and the fingerprints and finish times of the stages it depends on,
so changing a config or re-running (`--force`) an upstream stage re-runs everything downstream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recon.console import info
from recon.errors import ReconError
from recon.layout import RunPaths
from recon.manifest import Manifest, fingerprint, input_fingerprint
from recon.split import SplitConfig
from recon.video import FramesConfig

STAGES = ("frames", "poses", "split", "depth", "align", "fuse", "train", "export", "report")
DEPENDS: dict[str, tuple[str, ...]] = {
    "frames": (),
    "poses": ("frames",),
    "split": ("poses",),
    "depth": ("split",),
    "align": ("depth",),
    "fuse": ("align",),
    "train": ("fuse",),
    "export": ("align", "fuse"),
    "report": ("train", "export"),
}


def _default_poses():
    from recon.poses import PosesConfig

    return PosesConfig()


def _default_depth():
    from depth.stage import DepthConfig

    return DepthConfig()


def _default_align():
    from depth.align import AlignConfig

    return AlignConfig()


def _default_fuse():
    from splat.init import FuseConfig

    return FuseConfig()


def _default_train():
    from splat.train import TrainConfig

    return TrainConfig()


@dataclass
class RunConfig:
    """Every stage's config; saved per stage into RUN/manifest.json."""

    frames: FramesConfig = field(default_factory=FramesConfig)
    poses: Any = field(default_factory=_default_poses)
    split: SplitConfig = field(default_factory=SplitConfig)
    depth: Any = field(default_factory=_default_depth)
    align: Any = field(default_factory=_default_align)
    fuse: Any = field(default_factory=_default_fuse)
    train: Any = field(default_factory=_default_train)


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    summary: dict[str, Any]


def _run_stage(name: str, input_path: Path | None, paths: RunPaths, cfg: RunConfig) -> dict[str, Any]:
    if name == "frames":
        from recon.video import extract_frames

        if input_path is None:
            raise ReconError("no INPUT given and the run has no frames yet: pass a video file or an image folder")
        return extract_frames(input_path, paths, cfg.frames)
    if name == "poses":
        from recon.poses import run_poses

        return run_poses(paths, cfg.poses)
    if name == "split":
        from recon.cameras import CameraSet
        from recon.split import make_split, save_split

        cams = CameraSet.load(paths.cameras_json)
        aliases = _source_names(paths, cams)
        split = make_split(len(cams), cams.files, cfg.split, cams.registered, aliases=aliases)
        save_split(paths.split_json, split)
        return {
            "train views": len(split["train"]),
            "test views": len(split["test"]),
            "prior frames": len(split["prior"]),
            "protocol": split["protocol"],
        }
    if name == "depth":
        from depth.stage import run_depth

        return run_depth(paths, cfg.depth)
    if name == "align":
        from depth.align import run_align

        return run_align(paths, cfg.align)
    if name == "fuse":
        from splat.init import run_fuse

        return run_fuse(paths, cfg.fuse)
    if name == "train":
        from splat.train import run_train

        return run_train(paths, cfg.train)
    if name == "export":
        from recon.ns_export import export_nerfstudio

        out = export_nerfstudio(paths)
        return {"transforms.json": str(out)}
    if name == "report":
        from recon.report import write_report

        return {"report": str(write_report(paths))}
    raise ValueError(f"unknown stage {name}")


def _source_names(paths: RunPaths, cams) -> list[list[str]]:
    """Other names a split file may use for each frame: the source image name and the frames/ file."""
    import json

    out: list[list[str]] = [[] for _ in range(len(cams))]
    if paths.frames_json.exists():
        frames = json.loads(paths.frames_json.read_text()).get("frames", [])
        by_src = {int(f["source_index"]): f for f in frames}
        for i, s in enumerate(cams.source_index):
            f = by_src.get(int(s))
            if f:
                out[i] = [n for n in (f.get("source_name"), f.get("file")) if n]
    return out


def stage_config(name: str, cfg: RunConfig) -> Any:
    return getattr(cfg, name, None)


def plan(until: str) -> list[str]:
    """Stages needed to produce `until`, in pipeline order."""
    if until not in STAGES:
        raise ReconError(f"unknown stage {until!r}; stages are {', '.join(STAGES)}")
    need: set[str] = set()

    def add(s: str) -> None:
        if s in need:
            return
        need.add(s)
        for d in DEPENDS[s]:
            add(d)

    add(until)
    return [s for s in STAGES if s in need]


def run_pipeline(
    input_path: str | Path | None,
    out: str | Path,
    cfg: RunConfig | None = None,
    until: str = "report",
    force: tuple[str, ...] | list[str] = (),
    stages: list[str] | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
) -> list[StageResult]:
    """Run the stages needed for `until` in run directory `out`.

    Finished stages whose fingerprint is unchanged are skipped; `force` names stages to redo.
    Returns one StageResult per stage considered. Raises ReconError on bad input.
    """
    cfg = cfg or RunConfig()
    paths = RunPaths(Path(out))
    paths.root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(paths)
    if input_path is not None:
        input_path = Path(input_path)
        if manifest.input and Path(manifest.input).resolve() != input_path.resolve() and manifest.is_done("frames"):
            info(f"input changed ({manifest.input} -> {input_path}): frames will be re-extracted")
        manifest.set_input(input_path.resolve() if input_path.exists() else input_path)
    elif manifest.input:
        input_path = Path(manifest.input)
    for f in force:
        if f not in STAGES:
            raise ReconError(f"--force {f}: unknown stage; stages are {', '.join(STAGES)}")
    todo = stages if stages is not None else plan(until)
    results: list[StageResult] = []
    fps: dict[str, str] = {}
    for name in todo:
        upstream = [(d, manifest.stage(d).get("fingerprint"), manifest.stage(d).get("finished")) for d in DEPENDS[name]]
        extra = input_fingerprint(input_path) if name == "frames" else None
        fp = fingerprint(name, stage_config(name, cfg), upstream, extra)
        fps[name] = fp
        if name != "report" and name not in force and manifest.is_done(name, fp):
            st = manifest.stage(name)
            res = StageResult(name, "skipped", float(st.get("seconds", 0.0)), st.get("summary", {}))
            results.append(res)
            if on_stage:
                on_stage(res)
            continue
        manifest.start(name, fp, stage_config(name, cfg))
        info(f"[bold cyan]▶ {name}[/bold cyan]")
        t0 = time.perf_counter()
        try:
            summary = _run_stage(name, input_path, paths, cfg) or {}
        except KeyboardInterrupt:
            manifest.finish(name, "interrupted", time.perf_counter() - t0)
            raise
        except ReconError as e:
            manifest.finish(name, "failed", time.perf_counter() - t0, error=str(e))
            raise
        except Exception as e:
            manifest.finish(name, "failed", time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
            raise
        dt = time.perf_counter() - t0
        manifest.finish(name, "done", dt, summary)
        res = StageResult(name, "ran", dt, summary)
        results.append(res)
        if on_stage:
            on_stage(res)
    return results
