"""Run orchestration: stages in order, each skipped when already done with the same inputs.

Stages (in order): frames -> poses -> split -> depth -> align -> fuse -> train -> export -> report, and the
optional mesh (after train), which runs only when asked for (`recon mesh`, `recon run --mesh`); a plan that has
both runs the mesh before the report, which shows it.
Asking for one stage runs the stages before it that are not done yet. Each stage's fingerprint is
made of its own config, the input, and the fingerprints and finish times of the stages it depends on,
so changing a config or re-running (`--force`) an upstream stage re-runs everything downstream.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from depth.errors import DepthError
from recon.artifacts.layout import RunPaths
from recon.atomic import describe_os_error
from recon.config import validate_run_config
from recon.console import info
from recon.errors import ReconError
from recon.lock import run_lock
from recon.manifest import Manifest, fingerprint, input_fingerprint, to_jsonable
from recon.stages import StageContext
from recon.stages.align import Config as AlignConfig
from recon.stages.depth import Config as DepthConfig
from recon.stages.frames import Config as FramesConfig
from recon.stages.fuse import Config as FuseConfig
from recon.stages.mesh import Config as MeshConfig
from recon.stages.poses import Config as PosesConfig
from recon.stages.split import Config as SplitConfig
from recon.stages.train import Config as TrainConfig
from splat.errors import SplatError


@dataclass(frozen=True)
class Stage:
    """One row of the pipeline: a stage's name, the stages it reads from, and its module in recon.stages."""

    name: str
    depends: tuple[str, ...]
    module: str

    def runner(self) -> ModuleType:
        """The stage module (it defines `Config` and `run(ctx, cfg)`)."""
        return importlib.import_module(self.module)


TABLE: tuple[Stage, ...] = (
    Stage("frames", (), "recon.stages.frames"),
    Stage("poses", ("frames",), "recon.stages.poses"),
    Stage("split", ("poses",), "recon.stages.split"),
    Stage("depth", ("split",), "recon.stages.depth"),
    Stage("align", ("depth",), "recon.stages.align"),
    Stage("fuse", ("align",), "recon.stages.fuse"),
    Stage("train", ("fuse",), "recon.stages.train"),
    Stage("export", ("align", "fuse"), "recon.stages.export"),
    Stage("report", ("train", "export"), "recon.stages.report"),
    Stage("mesh", ("train",), "recon.stages.mesh"),  # optional: no default target depends on it
)
BY_NAME = {s.name: s for s in TABLE}
STAGES = tuple(s.name for s in TABLE)
DEPENDS: dict[str, tuple[str, ...]] = {s.name: s.depends for s in TABLE}


@dataclass
class RunConfig:
    """Every stage's config (the `Config` class of its module in recon.stages); saved per stage into the manifest."""

    frames: FramesConfig = field(default_factory=FramesConfig)
    poses: PosesConfig = field(default_factory=PosesConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    summary: dict[str, Any]


def _run_stage(name: str, input_path: Path | None, paths: RunPaths, cfg: RunConfig) -> dict[str, Any]:
    return BY_NAME[name].runner().run(StageContext(paths, input_path), stage_config(name, cfg))


def stage_config(name: str, cfg: RunConfig) -> Any:
    return getattr(cfg, name, None)


def plan(until: str, also: Sequence[str] = ()) -> list[str]:
    """Stages needed to produce `until` and the stages in `also` (e.g. the optional "mesh"), in pipeline order."""
    for name in (until, *also):
        if name not in STAGES:
            raise ReconError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    need: set[str] = set()

    def add(s: str) -> None:
        if s in need:
            return
        need.add(s)
        for d in DEPENDS[s]:
            add(d)

    for name in (until, *also):
        add(name)
    last = [s for s in STAGES if s in need and s == "report"]  # the report shows every other stage's files
    return [s for s in STAGES if s in need and s != "report"] + last


def run_pipeline(
    input_path: str | Path | None,
    out: str | Path,
    cfg: RunConfig | None = None,
    until: str = "report",
    force: tuple[str, ...] | list[str] = (),
    stages: list[str] | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
    also: Sequence[str] = (),
) -> list[StageResult]:
    """Run the stages needed for `until` in run directory `out`, holding its writer lock (recon.lock).

    Finished stages whose fingerprint is unchanged are skipped; `force` names stages to redo; `also` adds optional
    stages (e.g. ("mesh",)) to those `until` needs.
    Returns one StageResult per stage considered. Raises ReconError on bad input or when another process
    writes into `out`, OSError (see recon.atomic.describe_os_error) when a file cannot be written.
    """
    cfg = validate_run_config(cfg or RunConfig())
    for f in force:
        if f not in STAGES:
            raise ReconError(f"--force {f}: unknown stage; stages are {', '.join(STAGES)}")
    todo = stages if stages is not None else plan(until, also)
    with run_lock(out):
        paths = RunPaths(Path(out))
        manifest = Manifest(paths)
        manifest.recover()
        input_path = _remember_input(manifest, input_path)
        _preflight(todo, manifest, cfg, force)
        results: list[StageResult] = []
        for name in todo:
            res = _one_stage(name, manifest, input_path, paths, cfg, force)
            results.append(res)
            if on_stage:
                on_stage(res)
    return results


def _preflight(todo: Sequence[str], manifest: Manifest, cfg: RunConfig, force: Sequence[str]) -> None:
    """Each stage module's optional `preflight(cfg)` (checks that need no run files, e.g. DVD weights), for the
    stages that may run: not done yet, forced, or with a config other than the one they finished with."""
    for name in todo:
        check = getattr(BY_NAME[name].runner(), "preflight", None)
        if check is None:
            continue
        lasting, one_off = split_one_off(stage_config(name, cfg))
        st = manifest.stage(name)
        if name in force or one_off or st.get("status") != "done" or st.get("config") != to_jsonable(lasting):
            try:
                check(stage_config(name, cfg))
            except (DepthError, SplatError) as e:
                raise ReconError(str(e)) from e


def _remember_input(manifest: Manifest, input_path: str | Path | None) -> Path | None:
    """The input to use: the one given (recorded in the manifest), else the one the manifest remembers."""
    if input_path is None:
        return Path(manifest.input) if manifest.input else None
    input_path = Path(input_path)
    if manifest.input and Path(manifest.input).resolve() != input_path.resolve() and manifest.is_done("frames"):
        info(f"input changed ({manifest.input} -> {input_path}): frames will be re-extracted")
    manifest.set_input(input_path.resolve() if input_path.exists() else input_path)
    return input_path


def _one_stage(
    name: str, manifest: Manifest, input_path: Path | None, paths: RunPaths, cfg: RunConfig, force: Sequence[str]
) -> StageResult:
    """Skip stage `name` when done with the same fingerprint, else run it and record the outcome."""
    upstream = [(d, manifest.stage(d).get("fingerprint"), manifest.stage(d).get("finished")) for d in DEPENDS[name]]
    extra = input_fingerprint(input_path) if name == "frames" else None
    requested = stage_config(name, cfg)
    lasting, one_off = split_one_off(requested)
    fp = fingerprint(name, lasting, upstream, extra)
    if name != "report" and name not in force and not one_off and manifest.is_done(name, fp):
        st = manifest.stage(name)
        return StageResult(name, "skipped", float(st.get("seconds", 0.0)), st.get("summary", {}))
    manifest.start(name, fp, lasting, requested if one_off else None)
    info(f"[bold cyan]▶ {name}[/bold cyan]")
    t0 = time.perf_counter()
    try:
        summary = _run_stage(name, input_path, paths, cfg) or {}
    except KeyboardInterrupt:
        _record_end(manifest, name, "interrupted", t0, "interrupted by the user")
        raise
    except (ReconError, DepthError, SplatError) as e:  # one-line messages: recorded as the user sees them
        _record_end(manifest, name, "failed", t0, str(e))
        raise
    except OSError as e:
        _record_end(manifest, name, "failed", t0, describe_os_error(e))
        raise
    except Exception as e:
        _record_end(manifest, name, "failed", t0, f"{type(e).__name__}: {e}")
        raise
    dt = time.perf_counter() - t0
    manifest.finish(name, "done", dt, summary)
    return StageResult(name, "ran", dt, summary)


def split_one_off(stage_cfg: Any) -> tuple[Any, bool]:
    """(the stage config with its one-off requests (`Config.ONE_OFF`, e.g. train's resume / eval_only) reset to
    their defaults, whether any was set). The first is what the run fingerprints and keeps as its base."""
    names = getattr(type(stage_cfg), "ONE_OFF", ())
    if not names or not dataclasses.is_dataclass(stage_cfg):
        return stage_cfg, False
    defaults = {f.name: f.default for f in dataclasses.fields(stage_cfg) if f.name in names}
    asked = any(getattr(stage_cfg, n) != d for n, d in defaults.items())
    return dataclasses.replace(cast(Any, stage_cfg), **defaults), asked


def _record_end(manifest: Manifest, name: str, status: str, t0: float, error: str) -> None:
    """Mark the stage failed/interrupted; when even the manifest cannot be written, the stage's own error
    still reaches the user (the stage then stays "running" on disk, never "done", until the next run)."""
    try:
        manifest.finish(name, status, time.perf_counter() - t0, error=error)
    except (OSError, ReconError):
        pass
