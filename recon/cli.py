"""The `recon` command line: one subcommand per stage, each running the stages it needs first.

    recon run scene.mp4 --out runs/scene            # everything: frames ... train, export, report
    recon poses scene.mp4 --out RUN --max-frames 60 --max-size 320
    recon depth --out RUN --backend stereo           # INPUT remembered in RUN/manifest.json
    recon export nerfstudio RUN
    recon mesh RUN                                   # optional: a triangle mesh (RUN/mesh/mesh.ply)
    recon report RUN
    recon batch a.mp4 b.mp4 videos/ --out runs/batch [--address HOST:PORT]   # many scenes on a Ray cluster
    recon view RUN                                   # the trained splat in the browser (prints the URL)

Configuration: preset (configs/cpu.yaml or cuda.yaml, picked by device) <- --config FILE.yaml <- flags
<- --set section.field=value. The merged config of a stage is saved in RUN/manifest.json when the stage succeeds.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from recon.errors import ReconError

BACKENDS = Literal["auto", "dvd", "stereo", "file"]


# StageCommand field -> the config keys it sets (its default in --help is the preset's value of the first key).
FLAG_KEYS: dict[str, tuple[str, ...]] = {
    "stride": ("frames.stride",),
    "max_frames": ("frames.max_frames",),
    "target_fps": ("frames.target_fps",),
    "max_size": ("frames.max_size",),
    "dedup": ("frames.dedup",),
    "mapper": ("poses.mapper",),
    "matcher": ("poses.matcher",),
    "poses": ("poses.poses",),
    "test_every": ("split.test_every",),
    "train_views": ("split.train_views",),
    "split": ("split.split_file",),
    "prior_from_all_frames": ("split.prior_from_all_frames",),
    "prior_frames": ("split.prior_frames",),
    "split_protocol": ("split.protocol",),
    "backend": ("depth.backend",),
    "dvd_weights": ("depth.dvd.dvd_weights",),
    "vae_weights": ("depth.dvd.vae_weights",),
    "dvd_config": ("depth.dvd.dvd_config",),
    "dtype": ("depth.dvd.dtype",),
    "depth_files": ("depth.file.path",),
    "align_mode": ("align.mode",),
    "iterations": ("train.iterations",),
    "init": ("train.init",),
    "depth_loss": ("train.depth_loss",),
    "device": ("train.device", "depth.dvd.device"),
    "resume": ("train.resume",),
}


@functools.cache
def _preset_values() -> tuple[str, dict[str, object], str, dict[str, object]]:
    """(this machine's preset, its value of every FLAG_KEYS key, the other preset, its values)."""
    from recon.config import preset_config, resolve_preset

    here = resolve_preset("auto")
    other = "cuda" if here == "cpu" else "cpu"
    out = []
    for name in (here, other):
        cfg = preset_config(name)
        values = {}
        for keys in FLAG_KEYS.values():
            node: object = cfg
            for part in keys[0].split("."):
                node = getattr(node, part, None)
            values[keys[0]] = node
        out.append(values)
    return here, out[0], other, out[1]


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _default_hint(key: str) -> Callable[[str], str]:
    """The `(default: ...)` text of a flag: the preset's value (both presets' when they differ), computed
    when the parser is built."""

    def hint(_: str) -> str:
        try:
            here, mine, other, theirs = _preset_values()
        except Exception:  # a broken preset file must not break --help
            return ""
        if mine[key] == theirs[key]:
            return f"(default: {_show(mine[key])})"
        return f"(default: {_show(mine[key])} from the {here} preset used here; {other} preset: {_show(theirs[key])})"

    return hint


def _opt(key: str, metavar: str | None = None) -> object:
    return tyro.conf.arg(metavar=metavar, help_behavior_hint=_default_hint(key))


def _preset_hint(_: str) -> str:
    try:
        return f"(default: auto = {_preset_values()[0]} on this machine)"
    except Exception:
        return "(default: auto)"


Flag = tyro.conf.FlagCreatePairsOff[bool]


@dataclass
class StageCommand:
    input: Annotated[
        tyro.conf.Positional[Path | None],
        tyro.conf.arg(metavar="INPUT", help_behavior_hint="(optional once RUN has frames)"),
    ] = None
    """Video file or image folder (remembered in RUN/manifest.json)."""
    out: Annotated[Path, tyro.conf.arg(metavar="RUN")] = Path("runs/latest")
    """Run directory."""
    config: Annotated[Path | None, tyro.conf.arg(metavar="FILE.yaml", help_behavior_hint="(default: none)")] = None
    """YAML file with stage sections (frames:, poses:, split:, depth:, align:, fuse:, train:)."""
    preset: Annotated[Literal["auto", "cpu", "cuda"], tyro.conf.arg(help_behavior_hint=_preset_hint)] = "auto"
    """Device preset: the defaults of every option below (configs/cpu.yaml, configs/cuda.yaml)."""
    set: Annotated[tuple[str, ...], tyro.conf.arg(metavar="SECTION.FIELD=VALUE", help_behavior_hint="")] = ()
    """Overrides of any config field, e.g. --set train.iterations=500 depth.stereo.num_planes=96."""
    force: Annotated[tuple[str, ...], tyro.conf.arg(metavar="STAGE", help_behavior_hint="")] = ()
    """Stages to redo even if finished (downstream stages follow)."""
    verbose: Annotated[Flag, tyro.conf.arg(aliases=("-v",), help_behavior_hint="")] = False
    """More output."""
    quiet: Annotated[Flag, tyro.conf.arg(aliases=("-q",), help_behavior_hint="")] = False
    """Only errors and the final table."""

    # frames
    stride: Annotated[int | None, _opt("frames.stride", "N")] = None
    """Keep every N-th video frame."""
    max_frames: Annotated[int | None, _opt("frames.max_frames", "N")] = None
    """Keep at most N frames, spread evenly (0 = no limit)."""
    target_fps: Annotated[float | None, _opt("frames.target_fps", "FPS")] = None
    """Sample the video at about this frame rate (0 = the source rate)."""
    max_size: Annotated[int | None, _opt("frames.max_size", "PIXELS")] = None
    """Long side of the stored frames in pixels (0 = the source size)."""
    dedup: Annotated[Flag, tyro.conf.arg(help_behavior_hint="")] = True
    """Keep near-duplicate frames (by default, frames where the camera does not move are dropped)."""
    # poses
    mapper: Annotated[Literal["incremental", "global"] | None, _opt("poses.mapper", "{incremental,global}")] = None
    """COLMAP mapper."""
    matcher: Annotated[
        Literal["auto", "sequential", "exhaustive"] | None, _opt("poses.matcher", "{auto,sequential,exhaustive}")
    ] = None
    """Feature matching (auto: sequential for video, exhaustive for small image sets)."""
    poses: Annotated[Path | None, _opt("poses.poses", "PATH")] = None
    """Known poses (COLMAP model folder, transforms.json or LLFF poses_bounds.npy): skips SfM."""
    # split
    test_every: Annotated[int | None, _opt("split.test_every", "N")] = None
    """Hold out every N-th frame as a test view (0: none)."""
    train_views: Annotated[int | None, _opt("split.train_views", "N")] = None
    """Sparse view: keep N training views spread evenly (0 = all)."""
    split: Annotated[Path | None, _opt("split.split_file", "FILE.json")] = None
    """JSON split file with 'train' and 'test' lists."""
    split_protocol: Annotated[Literal["default", "llff"] | None, _opt("split.protocol", "{default,llff}")] = None
    """llff: the LLFF sparse-view benchmark (test views 0, 8, 16...; --train-views N by linspace over the rest;
    every input image kept at its size, training and evaluation at it: overrides the preset's size caps)."""
    prior_from_all_frames: Annotated[Flag, tyro.conf.arg(help_behavior_hint="")] = False
    """Compute the depth prior on all frames, test views included (= --prior-frames all)."""
    prior_frames: Annotated[
        Literal["train", "non-test", "all"] | None, _opt("split.prior_frames", "{train,non-test,all}")
    ] = None
    """Frames the depth prior is computed on: the training views, every frame but the test views
    (a video depth model sees the whole clip; fusion and the depth loss still use training views only), or all."""
    # depth
    backend: Annotated[BACKENDS | None, _opt("depth.backend", "{auto,dvd,stereo,file}")] = None
    """Depth backend; auto = DVD when its weights and a CUDA GPU are available, else stereo."""
    dvd_weights: Annotated[Path | None, _opt("depth.dvd.dvd_weights", "PATH")] = None
    """DVD checkpoint (.safetensors; none = the cache folder or a download)."""
    vae_weights: Annotated[Path | None, _opt("depth.dvd.vae_weights", "PATH")] = None
    """Wan2.1 VAE (Wan2.1_VAE.pth or a diffusers folder)."""
    dvd_config: Annotated[Path | None, _opt("depth.dvd.dvd_config", "FILE.json")] = None
    """DVD architecture config JSON (none = the shipped Wan2.1-T2V-1.3B config)."""
    dtype: Annotated[
        Literal["auto", "float32", "bfloat16", "float16"] | None,
        _opt("depth.dvd.dtype", "{auto,float32,bfloat16,float16}"),
    ] = None
    """DVD precision (auto: bf16 on CUDA, fp32 on CPU)."""
    depth_files: Annotated[Path | None, _opt("depth.file.path", "PATH")] = None
    """Backend file: folder or .npz of depth/disparity maps."""
    # align
    align_mode: Annotated[
        Literal["global", "per-window", "per-frame"] | None, _opt("align.mode", "{global,per-window,per-frame}")
    ] = None
    """How many scale/shift pairs are fitted to the SfM points."""
    # train
    iterations: Annotated[int | None, _opt("train.iterations", "N")] = None
    """Training iterations."""
    init: Annotated[Literal["depth", "sfm", "random"] | None, _opt("train.init", "{depth,sfm,random}")] = None
    """Gaussian initialisation."""
    depth_loss: Annotated[
        Literal["none", "l1-inverse", "pearson", "patch-pearson"] | None,
        _opt("train.depth_loss", "{none,l1-inverse,pearson,patch-pearson}"),
    ] = None
    """Depth regulariser."""
    device: Annotated[str | None, _opt("train.device", "DEVICE")] = None
    """Torch device for depth and training (auto, cpu, cuda, cuda:1...)."""
    resume: Annotated[Flag, tyro.conf.arg(help_behavior_hint="")] = False
    """Resume training from RUN/splat/checkpoint.pt."""


def _flag_overrides(cmd: StageCommand) -> dict:
    """Flat flags -> nested config mapping (only flags the user gave)."""
    o: dict = {}
    for name, keys in FLAG_KEYS.items():
        value = getattr(cmd, name)
        if value is None or (isinstance(value, bool) and value == getattr(StageCommand, name)):
            continue  # not given
        for key in keys:
            node = o
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = str(value) if isinstance(value, Path) else value
    return o


def _given_flag(cmd: StageCommand, message: str) -> str:
    """A validation message about a config key the user set with a flag names the flag instead."""
    for name, keys in FLAG_KEYS.items():
        value = getattr(cmd, name)
        if value is None or (isinstance(value, bool) and value == getattr(StageCommand, name)):
            continue
        for key in keys:
            if message.startswith((f"{key} ", f"{key}:")):
                return f"--{name.replace('_', '-')}{message[len(key) :]}"
    return message


def build_config(cmd: StageCommand):
    """Merge preset, (a sparse-view run's settings,) saved run configs, --config, flags and --set into a RunConfig."""
    from recon.config import apply_mapping, load_yaml, nest, parse_set, preset_config, validate_run_config
    from recon.stages.split import sparse_settings, sparse_view

    def build(cfg):
        cfg = _apply_saved(cfg, cmd.out)
        if cmd.config is not None:
            cfg = apply_mapping(cfg, load_yaml(cmd.config))
        cfg = _protocol_settings(apply_mapping(cfg, _flag_overrides(cmd)), cmd)
        for item in cmd.set:
            keys, value = parse_set(item)
            cfg = apply_mapping(cfg, nest(keys, value))
        return cfg

    cfg = build(preset_config(cmd.preset))
    if sparse_view(cfg):  # the sparse-view settings sit between the preset and the run's saved configs, flags, --set
        cfg = build(sparse_settings(preset_config(cmd.preset), cfg.split.protocol))
    try:
        return validate_run_config(cfg)
    except ReconError as e:
        raise ReconError(_given_flag(cmd, str(e)), e.exit_code) from e


def _protocol_settings(cfg, cmd: StageCommand):
    """Under split.protocol llff, the frames and train settings the protocol needs (recon.stages.split.LLFF_FRAMES,
    LLFF_TRAIN) replace the preset's (e.g. the cpu preset's 320 px frame cap); a flag asking otherwise is an
    error. Later --set overrides are checked by the split and train stages."""
    from recon.stages.split import LLFF_FRAMES, protocol_settings

    if cfg.split.protocol != "llff":
        return cfg
    for name, value in LLFF_FRAMES.items():
        given = getattr(cmd, name, None)
        if given is not None and given != getattr(StageCommand, name) and given != value:
            raise ReconError(
                f"--{name.replace('_', '-')} {_show(given)}: --split-protocol llff keeps every input image at its size"
            )
    return protocol_settings(cfg)


def _apply_saved(cfg, out: Path):
    """Configs saved in RUN/manifest.json by earlier commands (each stage's last successful one, never a
    failed attempt's: recon.manifest) become the base, so that a later
    `recon fuse --out RUN` without repeating `--max-frames` etc. keeps (and does not redo) earlier stages.
    Explicit --config files, flags and --set still override them."""
    from recon.artifacts import RunPaths
    from recon.config import apply_mapping
    from recon.manifest import Manifest

    paths = RunPaths(out)
    if not paths.manifest.exists():
        return cfg
    stages = Manifest(paths).data.get("stages", {})
    for f in dataclasses.fields(cfg):
        saved = stages.get(f.name, {}).get("config")
        if isinstance(saved, dict):
            try:
                cfg = dataclasses.replace(
                    cfg, **{f.name: apply_mapping(getattr(cfg, f.name), saved, f.name, strict=False)}
                )
            except ReconError:
                pass  # an unusable saved config: fall back to the defaults
    return cfg


def _summary_table(results, paths) -> None:
    """The command's result on stdout: one row per stage, then the output files that exist."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"run: {paths.root}", show_lines=False)
    t.add_column("stage", style="bold")
    t.add_column("status")
    t.add_column("seconds", justify="right")
    t.add_column("figures")
    for r in results:
        figs = ", ".join(f"{k}: {_fmt(v)}" for k, v in (r.summary or {}).items() if not isinstance(v, (dict, list)))
        t.add_row(
            r.name, "[green]ran[/green]" if r.status == "ran" else "[dim]done earlier[/dim]", f"{r.seconds:.1f}", figs
        )
    out = Console(highlight=False)  # stdout: the table is the command's result
    out.print(t)
    present = [(k, p) for k, p in _output_files(paths) if p.exists()]
    if present:
        out.print("outputs: " + "  ".join(f"{k}: {p}" for k, p in present))


def _output_files(paths) -> list[tuple[str, Path]]:
    return [
        ("cameras", paths.cameras_json),
        ("depth", paths.disparity_npz),
        ("depth preview", paths.depth_preview_mp4),
        ("aligned depth", paths.aligned_npz),
        ("fused points", paths.init_ply),
        ("gaussians", paths.gaussians_ply),
        ("render video", paths.renders_mp4),
        ("metrics", paths.metrics_json),
        ("nerfstudio", paths.transforms_json),
        ("report", paths.report_html),
        ("mesh", paths.mesh_ply),
    ]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


STAGE_HELP = {
    "run": "Everything: frames, poses, split, depth, align, fuse, train, export, report.",
    "frames": "Decode and sample frames from a video or image folder.",
    "poses": "Camera intrinsics and poses with COLMAP (or import known poses with --poses).",
    "depth": "Per-frame depth/disparity with the chosen backend (dvd, stereo, file).",
    "align": "Align the depth to the SfM scale (metric-aligned depth).",
    "fuse": "Back-project aligned depth into a fused point cloud (points/init.ply).",
    "train": "Train Gaussians (depth-initialised, depth-regularised) and evaluate on test views.",
}
UNTIL = {
    "run": "report",
    "frames": "frames",
    "poses": "poses",
    "depth": "depth",
    "align": "align",
    "fuse": "fuse",
    "train": "train",
}


MESH_FLAG = Annotated[
    Flag,
    tyro.conf.arg(help="Also build the optional triangle mesh RUN/mesh/mesh.ply (recon mesh).", help_behavior_hint=""),
]


def _make_commands() -> dict[str, type]:
    cmds = {}
    for name, doc in STAGE_HELP.items():
        extra = [("mesh", MESH_FLAG, False)] if name == "run" else []
        cls = dataclasses.make_dataclass(f"{name.title()}Command", extra, bases=(StageCommand,))
        cls.__doc__ = doc
        cmds[name] = cls
    return cmds


@dataclass
class MeshCommand:
    """Triangle mesh of a trained run: TSDF fusion of the Gaussians' rendered depth -> RUN/mesh/mesh.ply
    (runs the stages it needs first; options: --set mesh.voxel_size=... mesh.min_alpha=...)."""

    run: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="RUN")]
    """Run directory (made by `recon run` or a stage command)."""
    preset: Annotated[Literal["auto", "cpu", "cuda"], tyro.conf.arg(help_behavior_hint=_preset_hint)] = "auto"
    """Device preset (configs/cpu.yaml, configs/cuda.yaml) for stages that still have to run."""
    config: Annotated[Path | None, tyro.conf.arg(metavar="FILE.yaml", help_behavior_hint="(default: none)")] = None
    """YAML file with stage sections (mesh:, train:, ...)."""
    set: Annotated[tuple[str, ...], tyro.conf.arg(metavar="SECTION.FIELD=VALUE", help_behavior_hint="")] = ()
    """Overrides of any config field, e.g. --set mesh.voxel_size=0.02 mesh.min_alpha=0.7."""
    force: Annotated[tuple[str, ...], tyro.conf.arg(metavar="STAGE", help_behavior_hint="")] = ()
    """Stages to redo even if finished."""


@dataclass
class ReportCommand:
    """Write RUN/report.html (self-contained) for a run directory."""

    run: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="RUN")]
    """Run directory (made by `recon run` or a stage command)."""


@dataclass
class EvalCommand:
    """Score a run against ground truth: ATE of camera centres (after Sim(3)) and depth AbsRel/δ1 -> RUN/eval.json."""

    run: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="RUN")]
    """Run directory (made by `recon run` or a stage command)."""
    gt_depth: str | None = None
    """GT depth file pattern with {source_index}, e.g. 'data/depth/frame-{source_index:06d}.depth.png'."""
    gt_depth_scale: float = 1000.0
    """GT depth value per unit (1000 for millimetre PNGs)."""
    gt_poses: str | None = None
    """GT c2w: pattern of 4x4 text files with {source_index}, or one file of rows 'frame_id source_index m00..m33'."""


@dataclass
class ExportCommand:
    """Export a run: `recon export nerfstudio RUN` writes RUN/transforms.json with depth PNGs and the fused cloud;
    `recon export ply RUN [--full-sh]` writes the trained Gaussians to RUN/export/gaussians.ply."""

    format: Annotated[tyro.conf.Positional[Literal["nerfstudio", "ply"]], tyro.conf.arg(metavar="{nerfstudio,ply}")]
    """Export format."""
    run: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="RUN")]
    """Run directory (made by `recon run` or a stage command)."""
    full_sh: Annotated[Flag, tyro.conf.arg(help_behavior_hint="")] = False
    """ply: write SH degree 3 (45 f_rest_* values, untrained bands zero), the layout every 3DGS viewer reads."""


@dataclass
class ViewCommand:
    """Look at a trained run in the browser: the Gaussians rendered live, the cameras, the fused cloud
    (recon.view; prints the URL; over SSH: ssh -L 8080:localhost:8080 HOST, then open http://localhost:8080)."""

    run: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="RUN")]
    """Run directory with a trained splat (splat/gaussians.ply or splat/checkpoint.pt)."""
    host: str = "127.0.0.1"
    """Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network interface)."""
    port: int = 8080
    """Port to listen on (the next free one when it is busy)."""
    max_size: Annotated[int, tyro.conf.arg(metavar="N")] = 1024
    """Long side in pixels of the render once the camera stops (a quarter of it while it moves)."""
    device: str = "auto"
    """Torch device for rendering (auto, cpu, cuda, cuda:N)."""


def _existing_run(run: Path):
    from recon.artifacts import RunPaths

    paths = RunPaths(run)
    if not paths.root.is_dir():
        raise ReconError(f"run directory {paths.root} does not exist")
    return paths


def _report(cmd: ReportCommand) -> int:
    from recon.console import console
    from recon.stages.report import require_run, write_report

    console.print(f"report: {write_report(require_run(_existing_run(cmd.run)))}")
    return 0


def _eval(cmd: EvalCommand) -> int:
    from depth.checks import number
    from recon.console import console
    from recon.evaluate import EvalConfig, evaluate_run
    from recon.lock import run_lock

    number(cmd.gt_depth_scale, "--gt-depth-scale", ReconError, lo=0, lo_open=True)
    cfg = EvalConfig(gt_depth=cmd.gt_depth, gt_depth_scale=cmd.gt_depth_scale, gt_poses=cmd.gt_poses)
    paths = _existing_run(cmd.run)
    with run_lock(paths.root):  # writes RUN/eval.json
        res = evaluate_run(paths, cfg)
    for section, vals in res.items():
        console.print(f"[bold]{section}[/bold]: " + ", ".join(f"{k}={_fmt(v)}" for k, v in vals.items()))
    return 0


def _export(cmd: ExportCommand) -> int:
    from recon.console import console
    from recon.lock import run_lock
    from recon.stages import StageContext
    from recon.stages import export as export_stage

    paths = _existing_run(cmd.run)
    if cmd.format == "ply":
        with run_lock(paths.root):
            console.print(f"gaussians: {export_stage.export_ply(paths, cmd.full_sh)}")
        return 0
    if cmd.full_sh:
        raise ReconError("--full-sh applies to `recon export ply` only")
    with run_lock(paths.root):
        out = export_stage.run(StageContext(paths), export_stage.Config())["transforms.json"]
    console.print(f"nerfstudio transforms: {out}  (ns-train dvd-splat --data {paths.root})")
    return 0


def _view(cmd: ViewCommand) -> int:
    from recon.view import ViewConfig, serve

    return serve(cmd.run, ViewConfig(host=cmd.host, port=cmd.port, max_size=cmd.max_size, device=cmd.device))


def _mesh(cmd: MeshCommand) -> int:
    """`recon mesh RUN`: the pipeline up to the optional mesh stage, in an existing run directory."""
    paths = _existing_run(cmd.run)
    refresh = paths.report_html.exists()  # the report shows the mesh: a run that has one gets it rewritten
    force = (*cmd.force, "report") if refresh else tuple(cmd.force)
    stage_cmd = StageCommand(out=paths.root, config=cmd.config, preset=cmd.preset, set=cmd.set, force=force)
    return _stages(stage_cmd, "report" if refresh else "mesh", also=("mesh",))


def _stages(cmd: StageCommand, name: str, also: tuple[str, ...] = ()) -> int:
    from recon import console as con
    from recon.artifacts import RunPaths
    from recon.lock import run_lock
    from recon.pipeline import run_pipeline

    con.configure_logging(0 if cmd.quiet else (2 if cmd.verbose else 1))
    with run_lock(cmd.out):  # before reading the saved configs: they are the base of this command's config
        cfg = build_config(cmd)
        also = (*also, "mesh") if getattr(cmd, "mesh", False) else also
        until = UNTIL.get(name, name)  # "mesh" (recon mesh) is a stage of its own
        results = run_pipeline(cmd.input, cmd.out, cfg, until=until, force=tuple(cmd.force), also=also)
    _summary_table(results, RunPaths(cmd.out))
    return 0


def _parse(commands: dict[str, Callable[..., object]], argv: list[str]) -> object:
    """The command object for argv (tyro); a usage error becomes ONE ReconError line instead of tyro's box
    (--help still prints and exits 0)."""
    import contextlib
    import io

    err = io.StringIO()
    argv = merge_repeated(argv, ("--set", "--force"))
    try:
        with contextlib.redirect_stderr(err):
            return tyro.extras.subcommand_cli_from_dict(
                commands, args=argv, prog="recon", description="DVD-Splat: video -> poses -> video depth -> 3DGS."
            )
    except SystemExit as e:
        if e.code in (0, None):
            raise
        raise ReconError(usage_error_line(err.getvalue())) from None


def merge_repeated(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """`--set a=1 --max-frames 9 --set b=2` -> `--max-frames 9 --set a=1 b=2`: every value of a repeated
    multi-value flag is kept (argparse would keep only the last occurrence's)."""
    out: list[str] = []
    values: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in flags:
            vals = values.setdefault(name, [])
            if "=" in arg:
                vals.append(arg.split("=", 1)[1])
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                vals.append(argv[i])
                i += 1
            continue
        out.append(arg)
        i += 1
    for name, vals in values.items():
        out += [name, *vals]
    return out


_KINDS = {"INT": "an integer", "FLOAT": "a number", "PATH": "a path", "STR": "a string"}


def usage_error_line(text: str) -> str:
    """tyro's boxed usage error (title, message, separators, help excerpt) -> one line."""
    rows = [line.strip().strip("│╭╮╰╯").strip() for line in text.splitlines()]
    title = rows[0].strip("─ ").lower() if rows else ""
    blocks: list[list[str]] = [[]]
    for row in rows[1:]:
        if row and set(row) <= {"─"}:
            blocks.append([])
        elif row.strip("─"):
            blocks[-1].append(row)
        elif blocks[-1] and blocks[-1][-1] != "":
            blocks[-1].append("")  # a blank line ends a block's first paragraph
    paragraphs = [" ".join(b[: b.index("")] if "" in b else b) for b in blocks if b]
    kept = [t for t in paragraphs if not t.startswith(("For full helptext", "Argument helptext"))]
    msg = "; ".join(kept) or title or "invalid command line"
    msg = re.sub(
        r"Error parsing (\S+): no type matching (?:\{None\}\|)?(\w+) could be instantiated from \[(.*)\]\.?",
        lambda m: f"{m.group(1)}: expected {_KINDS.get(m.group(2), m.group(2))}, got {m.group(3)}",
        msg,
    )
    msg = msg.replace("'None', ", "").replace(", 'None'", "")
    return f"{title}: {msg}" if title == "missing subcommand" else msg


def _dispatch(argv: list[str]) -> int:
    from recon import console as con
    from recon.batch import BatchCommand, run_batch

    commands = _make_commands()
    all_cmds: dict[str, Callable[..., object]] = {
        **commands,
        "batch": BatchCommand,
        "export": ExportCommand,
        "report": ReportCommand,
        "eval": EvalCommand,
        "mesh": MeshCommand,
        "view": ViewCommand,
    }
    cmd = _parse(all_cmds, argv)
    con.configure_logging()
    if isinstance(cmd, ReportCommand):
        return _report(cmd)
    if isinstance(cmd, EvalCommand):
        return _eval(cmd)
    if isinstance(cmd, ExportCommand):
        return _export(cmd)
    if isinstance(cmd, MeshCommand):
        return _mesh(cmd)
    if isinstance(cmd, ViewCommand):
        return _view(cmd)
    if isinstance(cmd, BatchCommand):
        return run_batch(cmd)
    assert isinstance(cmd, StageCommand)
    return _stages(cmd, next(k for k, v in commands.items() if isinstance(cmd, v)))


def main(argv: list[str] | None = None) -> int:
    """The `recon` command; returns the exit status. Expected failures are one `error: ...` line on stderr."""
    from depth.errors import DepthError
    from recon.atomic import describe_os_error
    from splat.errors import SplatError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except ReconError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a run directory or file that cannot be created, read or written (full disk...)
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except (DepthError, SplatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; lower --max-size / --max-frames or use a smaller preset", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
