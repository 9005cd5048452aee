"""The `recon` command line: one subcommand per stage, each running the stages it needs first.

    recon run scene.mp4 --out runs/scene            # everything: frames ... train, export, report
    recon poses scene.mp4 --out RUN --max-frames 60 --max-size 320
    recon depth --out RUN --backend stereo           # INPUT remembered in RUN/manifest.json
    recon export nerfstudio RUN
    recon report RUN

Configuration: preset (configs/cpu.yaml or cuda.yaml, picked by device) <- --config FILE.yaml <- flags
<- --set section.field=value. The merged config of every stage is saved in RUN/manifest.json.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from recon.errors import ReconError

BACKENDS = Literal["auto", "dvd", "stereo", "file"]


@dataclass
class StageCommand:
    input: tyro.conf.Positional[Path | None] = None
    """Video file or image folder (optional once RUN has frames: it is remembered in the manifest)."""
    out: Path = Path("runs/latest")
    """Run directory."""
    config: Path | None = None
    """YAML file with stage sections (frames:, poses:, split:, depth:, align:, fuse:, train:)."""
    preset: Literal["auto", "cpu", "cuda"] = "auto"
    """Device preset; auto = cuda when a CUDA GPU is visible, else cpu."""
    set: tuple[str, ...] = ()
    """Overrides of any config field, e.g. --set train.iterations=500 depth.stereo.num_planes=96."""
    force: tuple[str, ...] = ()
    """Stages to redo even if finished (downstream stages follow)."""
    verbose: Annotated[bool, tyro.conf.arg(aliases=("-v",))] = False
    """More output."""
    quiet: Annotated[bool, tyro.conf.arg(aliases=("-q",))] = False
    """Only errors and the final table."""

    # frames
    stride: int | None = None
    """Keep every N-th video frame."""
    max_frames: int | None = None
    """Keep at most N frames, spread evenly."""
    target_fps: float | None = None
    """Sample the video at about this frame rate."""
    max_size: int | None = None
    """Long side of the stored frames in pixels."""
    no_dedup: bool = False
    """Keep near-duplicate frames (camera not moving)."""
    # poses
    mapper: Literal["incremental", "global"] | None = None
    """COLMAP mapper."""
    matcher: Literal["auto", "sequential", "exhaustive"] | None = None
    """Feature matching (auto: sequential for video, exhaustive for small image sets)."""
    poses: Path | None = None
    """Known poses (COLMAP model folder or transforms.json): skips SfM."""
    # split
    test_every: int | None = None
    """Hold out every N-th frame as a test view (0: none)."""
    train_views: int | None = None
    """Sparse view: keep N training views spread evenly."""
    split: Path | None = None
    """JSON split file with 'train' and 'test' lists."""
    prior_from_all_frames: bool = False
    """Compute the depth prior on all frames, test views included (= --prior-frames all)."""
    prior_frames: Literal["train", "non-test", "all"] | None = None
    """Frames the depth prior is computed on: the training views (default), every frame but the test views
    (a video depth model sees the whole clip; fusion and the depth loss still use training views only), or all."""
    # depth
    backend: BACKENDS | None = None
    """Depth backend; auto = DVD when its weights and a CUDA GPU are available, else stereo."""
    dvd_weights: Path | None = None
    """DVD checkpoint (.safetensors)."""
    vae_weights: Path | None = None
    """Wan2.1 VAE (Wan2.1_VAE.pth or a diffusers folder)."""
    dvd_config: Path | None = None
    """DVD architecture config JSON (default: the shipped Wan2.1-T2V-1.3B config)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    """DVD precision (auto: bf16 on CUDA, fp32 on CPU)."""
    depth_files: Path | None = None
    """Backend file: folder or .npz of depth/disparity maps."""
    # align
    align_mode: Literal["global", "per-window", "per-frame"] | None = None
    """How many scale/shift pairs are fitted to the SfM points."""
    # train
    iterations: int | None = None
    """Training iterations."""
    init: Literal["depth", "sfm", "random"] | None = None
    """Gaussian initialisation."""
    depth_loss: Literal["none", "l1-inverse", "pearson"] | None = None
    """Depth regulariser."""
    device: str | None = None
    """Torch device for depth and training (auto, cpu, cuda, cuda:1...)."""
    resume: bool = False
    """Resume training from RUN/splat/checkpoint.pt."""


def _flag_overrides(cmd: StageCommand) -> dict:
    """Flat flags -> nested config mapping (only flags the user gave)."""
    o: dict = {}

    def put(section: str, key: str, value) -> None:
        if value is None:
            return
        node = o
        parts = [section] + key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value

    put("frames", "stride", cmd.stride)
    put("frames", "max_frames", cmd.max_frames)
    put("frames", "target_fps", cmd.target_fps)
    put("frames", "max_size", cmd.max_size)
    if cmd.no_dedup:
        put("frames", "dedup", False)
    put("poses", "mapper", cmd.mapper)
    put("poses", "matcher", cmd.matcher)
    put("poses", "poses", str(cmd.poses) if cmd.poses else None)
    put("split", "test_every", cmd.test_every)
    put("split", "train_views", cmd.train_views)
    put("split", "split_file", str(cmd.split) if cmd.split else None)
    if cmd.prior_from_all_frames:
        put("split", "prior_from_all_frames", True)
    put("split", "prior_frames", cmd.prior_frames)
    put("depth", "backend", cmd.backend)
    put("depth", "dvd.dvd_weights", str(cmd.dvd_weights) if cmd.dvd_weights else None)
    put("depth", "dvd.vae_weights", str(cmd.vae_weights) if cmd.vae_weights else None)
    put("depth", "dvd.dvd_config", str(cmd.dvd_config) if cmd.dvd_config else None)
    put("depth", "dvd.dtype", cmd.dtype)
    put("depth", "dvd.device", cmd.device)
    if cmd.depth_files:
        put("depth", "file.path", str(cmd.depth_files))
    put("align", "mode", cmd.align_mode)
    put("train", "iterations", cmd.iterations)
    put("train", "init", cmd.init)
    put("train", "depth_loss", cmd.depth_loss)
    put("train", "device", cmd.device)
    if cmd.resume:
        put("train", "resume", True)
    return o


def build_config(cmd: StageCommand):
    """Merge preset, saved run configs, --config, flags and --set into a RunConfig."""
    from recon.config import apply_mapping, load_yaml, nest, parse_set, preset_config

    cfg = preset_config(cmd.preset)
    cfg = _apply_saved(cfg, cmd.out)
    if cmd.config is not None:
        cfg = apply_mapping(cfg, load_yaml(cmd.config))
    cfg = apply_mapping(cfg, _flag_overrides(cmd))
    for item in cmd.set:
        keys, value = parse_set(item)
        cfg = apply_mapping(cfg, nest(keys, value))
    return cfg


def _apply_saved(cfg, out: Path):
    """Configs saved in RUN/manifest.json by earlier commands become the base, so that a later
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


def _make_commands() -> dict[str, type]:
    cmds = {}
    for name, doc in STAGE_HELP.items():
        cls = dataclasses.make_dataclass(f"{name.title()}Command", [], bases=(StageCommand,))
        cls.__doc__ = doc
        cmds[name] = cls
    return cmds


@dataclass
class ReportCommand:
    """Write RUN/report.html (self-contained) for a run directory."""

    run: tyro.conf.Positional[Path]


@dataclass
class EvalCommand:
    """Score a run against ground truth: ATE of camera centres (after Sim(3)) and depth AbsRel/δ1 -> RUN/eval.json."""

    run: tyro.conf.Positional[Path]
    gt_depth: str | None = None
    """GT depth file pattern with {source_index}, e.g. 'data/depth/frame-{source_index:06d}.depth.png'."""
    gt_depth_scale: float = 1000.0
    """GT depth value per unit (1000 for millimetre PNGs)."""
    gt_poses: str | None = None
    """GT c2w: pattern of 4x4 text files with {source_index}, or one file of rows 'frame_id source_index m00..m33'."""


@dataclass
class ExportCommand:
    """Export a run: `recon export nerfstudio RUN` writes RUN/transforms.json with depth PNGs and the fused cloud."""

    format: tyro.conf.Positional[Literal["nerfstudio"]]
    run: tyro.conf.Positional[Path]


def _existing_run(run: Path):
    from recon.artifacts import RunPaths

    paths = RunPaths(run)
    if not paths.root.is_dir():
        raise ReconError(f"run directory {paths.root} does not exist")
    return paths


def _report(cmd: ReportCommand) -> int:
    from recon.console import console
    from recon.stages.report import write_report

    console.print(f"report: {write_report(_existing_run(cmd.run))}")
    return 0


def _eval(cmd: EvalCommand) -> int:
    from recon.console import console
    from recon.evaluate import EvalConfig, evaluate_run

    cfg = EvalConfig(gt_depth=cmd.gt_depth, gt_depth_scale=cmd.gt_depth_scale, gt_poses=cmd.gt_poses)
    res = evaluate_run(_existing_run(cmd.run), cfg)
    for section, vals in res.items():
        console.print(f"[bold]{section}[/bold]: " + ", ".join(f"{k}={_fmt(v)}" for k, v in vals.items()))
    return 0


def _export(cmd: ExportCommand) -> int:
    from recon.console import console
    from recon.stages import StageContext
    from recon.stages import export as export_stage

    paths = _existing_run(cmd.run)
    out = export_stage.run(StageContext(paths), export_stage.Config())["transforms.json"]
    console.print(f"nerfstudio transforms: {out}  (ns-train dvd-splat --data {paths.root})")
    return 0


def _stages(cmd: StageCommand, name: str) -> int:
    from recon import console as con
    from recon.artifacts import RunPaths
    from recon.pipeline import run_pipeline

    con.configure_logging(0 if cmd.quiet else (2 if cmd.verbose else 1))
    cfg = build_config(cmd)
    results = run_pipeline(cmd.input, cmd.out, cfg, until=UNTIL[name], force=tuple(cmd.force))
    _summary_table(results, RunPaths(cmd.out))
    return 0


def _dispatch(argv: list[str]) -> int:
    from recon import console as con

    commands = _make_commands()
    all_cmds: dict[str, Callable[..., object]] = {
        **commands,
        "export": ExportCommand,
        "report": ReportCommand,
        "eval": EvalCommand,
    }
    cmd = tyro.extras.subcommand_cli_from_dict(
        all_cmds, args=argv, prog="recon", description="DVD-Splat: video -> poses -> video depth -> Gaussian Splatting."
    )
    con.configure_logging()
    if isinstance(cmd, ReportCommand):
        return _report(cmd)
    if isinstance(cmd, EvalCommand):
        return _eval(cmd)
    if isinstance(cmd, ExportCommand):
        return _export(cmd)
    assert isinstance(cmd, StageCommand)
    return _stages(cmd, next(k for k, v in commands.items() if isinstance(cmd, v)))


def main(argv: list[str] | None = None) -> int:
    """The `recon` command; returns the exit status. Expected failures are one `error: ...` line on stderr."""
    from depth.errors import DepthError
    from splat.errors import SplatError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except ReconError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
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
