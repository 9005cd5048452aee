"""`recon batch INPUT... --out DIR`: many scenes on a Ray cluster, each the run directory DIR/<name>/.

Every input (a video, an image folder, or a folder of videos, expanded) is one scene, run by one Ray task
that calls the same pipeline as `recon run` (recon.pipeline.run_pipeline) into DIR/<name>/, holding that
run's writer lock (recon.lock): a batch run and a single run of a scene are interchangeable. A task asks for
`--cpus-per-scene` CPUs (torch, the compiled rasterizer and COLMAP then use as many threads) and, when the
cluster has GPUs, one GPU (DVD depth and training); Ray runs as many at once as the cluster holds and retries
a task whose node is lost (the retry waits for the lock of the lost attempt, and the pipeline redoes only
unfinished stages). A finished scene's stages are skipped, so running the same command again resumes a killed
batch.

DIR/batch.json (rewritten atomically as scenes start and finish), per scene: input, run, status (queued,
running, done, skipped = everything was done earlier, failed), seconds, started / finished (the last
attempt's local times on its node), node, attempts, metrics (the run's summary figures), error (one line)
and the status of each stage ("ran" / "skipped"). One failing scene never stops the others. One batch per DIR
at a time (DIR/.batch.lock, recon.lock.batch_lock): a second `recon batch` on DIR fails at once with one line.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import tyro

from recon.cli import Flag, StageCommand, build_config
from recon.errors import ReconError
from recon.lock import BATCH_LOCK_NAME

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
LOCK_WAIT_S = 120.0
"""How long a scene task waits for its run's lock (held by an attempt on a node that is being lost)."""
BATCH_JSON = "batch.json"
BATCH_DIR = ".batch"
"""DIR/.batch/: the batch's own bookkeeping (StartRecords)."""
RESERVED_NAMES = (BATCH_JSON, BATCH_DIR, BATCH_LOCK_NAME)
"""DIR's own entries, which no scene may be named."""
TASK_RETRIES = 4
"""Retries of a scene task whose worker or node dies (Ray's own fault tolerance)."""


@dataclass
class BatchCommand(StageCommand):
    """Many scenes on a Ray cluster: each INPUT (video, image folder, or folder of videos) -> run DIR/<name>/."""

    input: Annotated[tyro.conf.Positional[tuple[Path, ...]], tyro.conf.arg(metavar="INPUT", help_behavior_hint="")] = ()  # type: ignore[assignment]
    """Videos, image folders, or folders of videos (each video one scene)."""
    out: Annotated[Path, tyro.conf.arg(metavar="DIR")] = Path("runs/batch")
    """Batch folder: one run directory per scene, and batch.json. Every node must see it (shared filesystem)."""
    address: Annotated[str | None, tyro.conf.arg(metavar="HOST:PORT", help_behavior_hint="(default: none)")] = None
    """Join this Ray cluster (started with `ray start --head`); none = start a local one sized to this machine."""
    node_ip_address: Annotated[str | None, tyro.conf.arg(metavar="IP", help_behavior_hint="")] = None
    """This machine's address in the cluster, as for `ray start` (default: 127.0.0.2 for a local cluster)."""
    num_cpus: Annotated[int | None, tyro.conf.arg(metavar="N", help_behavior_hint="(default: all)")] = None
    """CPUs of the local cluster (without --address)."""
    cpus_per_scene: Annotated[int, tyro.conf.arg(metavar="N")] = 1
    """CPUs (and torch threads) per scene task."""
    temp_dir: Annotated[Path | None, tyro.conf.arg(metavar="PATH", help_behavior_hint="(default: /tmp/...)")] = None
    """Ray's session folder for the local cluster (keep it short: Ray's socket paths must stay < 108 chars)."""
    mesh: Annotated[Flag, tyro.conf.arg(help_behavior_hint="")] = False
    """Also build each scene's triangle mesh (as `recon run --mesh`)."""


@dataclass(frozen=True)
class Scene:
    name: str
    input: Path


def expand_inputs(inputs: tuple[Path, ...]) -> list[Scene]:
    """Inputs -> scenes: a folder with videos and no images gives one scene per video, any other path one
    scene (a missing or unreadable one fails in its own scene with the frames stage's message). Names are
    the file stems / folder names, made unique with -2, -3... (and never one of DIR's own files)."""
    from recon.video import IMAGE_EXTENSIONS

    paths: list[Path] = []
    for p in inputs:
        files = sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else []
        videos = [q for q in files if q.suffix.lower() in VIDEO_SUFFIXES]
        if videos and not any(q.suffix.lower() in IMAGE_EXTENSIONS for q in files):
            paths += videos
        else:
            paths.append(p)
    scenes, used = [], set(RESERVED_NAMES)
    for p in paths:
        base = (p.stem if p.suffix.lower() in VIDEO_SUFFIXES else p.name) or "scene"
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}-{k}"
        used.add(name)
        scenes.append(Scene(name, p))
    return scenes


def scene_command(cmd: BatchCommand, scene: Scene) -> StageCommand:
    """The `recon run` command of one scene: the batch's options, this input, run DIR/<name>."""
    values = {f.name: getattr(cmd, f.name) for f in fields(StageCommand)}
    return StageCommand(**{**values, "input": scene.input, "out": cmd.out / scene.name})


# --------------------------------------------------------------------------- on a node


def one_line(e: BaseException) -> str:
    """An exception as the one line `recon` prints for it."""
    from depth.errors import DepthError
    from recon.atomic import describe_os_error
    from splat.errors import SplatError

    if isinstance(e, (ReconError, DepthError, SplatError)):
        text = str(e)
    elif isinstance(e, OSError):
        text = describe_os_error(e)
    elif isinstance(e, MemoryError):
        text = "out of memory; lower --max-size / --max-frames or use a smaller preset"
    else:
        text = f"{type(e).__name__}: {e}"
    return (text.strip().splitlines() or [type(e).__name__])[0]


@contextlib.contextmanager
def lock_waiting(run: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold `run`'s writer lock (recon.lock), waiting up to `wait_s` seconds while another process holds it
    (a retried task's lost predecessor that is still being killed); then its one-line ReconError."""
    from recon.lock import run_lock

    deadline = time.monotonic() + wait_s
    while True:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(run_lock(run))
            break
        except ReconError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)
    with stack:
        yield


def run_scene(cmd: StageCommand, mesh: bool) -> dict[str, str]:
    """The pipeline of one scene (as `recon run`) under its lock; returns {stage: "ran" | "skipped"}."""
    from recon.pipeline import run_pipeline

    with lock_waiting(cmd.out):
        cfg = build_config(cmd)  # under the lock: the run's saved configs are the base, as in `recon run`
        also = ("mesh",) if mesh else ()
        results = run_pipeline(cmd.input, cmd.out, cfg, until="report", force=tuple(cmd.force), also=also)
    return {r.name: r.status for r in results}


def run_metrics(run: Path) -> dict[str, Any]:
    """The run's summary figures (RUN/metrics.json; numbers and strings only), {} when there are none."""
    from recon.artifacts import Metrics, RunPaths

    path = RunPaths(run).metrics_json
    try:
        summary = Metrics.load(path).summary if path.exists() else {}
    except ReconError:
        return {}
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}


def scene_task(cmd: StageCommand, mesh: bool, name: str, starts: StartRecords) -> dict[str, Any]:
    """Body of the Ray task of one scene: never raises; returns its batch.json record."""
    from recon import console as con
    from recon.cluster import node_label, use_task_threads

    node = node_label().split(":")[0]
    starts.add(name, node)
    use_task_threads()
    con.configure_logging(0)  # the driver shows the progress table; stages print errors only
    t0 = time.perf_counter()
    record: dict[str, Any] = {"node": node, "error": None, "stages": {}, "started": _now(ms=True)}
    try:
        record["stages"] = run_scene(cmd, mesh)
        ran = [s for s, status in record["stages"].items() if status == "ran" and s != "report"]
        record["status"] = "done" if ran else "skipped"
    except (Exception, MemoryError) as e:  # one failing scene never stops the others: its line is the result
        record.update(status="failed", error=one_line(e))
    record["seconds"] = round(time.perf_counter() - t0, 3)
    record["finished"] = _now(ms=True)
    record["metrics"] = run_metrics(cmd.out)
    return record


@dataclass(frozen=True)
class StartRecords:
    """DIR/.batch/starts/<scene>/<attempt>.json ({"node": IP}): which scene started where, and how often.

    Every attempt of a scene task writes one file as it starts (the folder is shared by every node, which
    `recon batch` checks first); the driver lists them. Files rather than a Ray actor: an actor is one more
    worker process (Ray's import alone is ~3 s of CPU while the first scenes start, then ~1 % of a core for
    the driver's polls), taken from the cores the scenes need. A new batch on DIR starts with none (`clear`).
    """

    folder: Path

    @classmethod
    def of(cls, out: Path) -> StartRecords:
        return cls(out / BATCH_DIR / "starts")

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)

    def add(self, scene: str, node: str) -> None:
        from recon.atomic import write_json

        (self.folder / scene).mkdir(parents=True, exist_ok=True)
        write_json(self.folder / scene / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json", {"node": node})

    def load(self) -> dict[str, list[str]]:
        """{scene: [node of each attempt, oldest first]}; a file that cannot be read is not counted."""
        from recon.artifacts import read_json_object

        out: dict[str, list[str]] = {}
        for scene in sorted(p for p in self.folder.glob("*") if p.is_dir()):
            nodes = []
            for f in sorted(scene.glob("*.json")):  # names start with time_ns: 19 digits, so oldest first
                with contextlib.suppress(ReconError, OSError, ValueError):
                    nodes.append(str(read_json_object(f, "batch start record")["node"]))
            out[scene.name] = nodes
        return out


def _now(ms: bool = False) -> str:
    return _dt.datetime.now().isoformat(timespec="milliseconds" if ms else "seconds")


# --------------------------------------------------------------------------- the driver


class BatchState:
    """What the driver knows about every scene; `records()` is batch.json's "scenes"."""

    def __init__(self, cmd: BatchCommand, scenes: list[Scene], stages: list[str]):
        self.cmd, self.scenes, self.stages = cmd, scenes, stages
        self.results: dict[str, dict[str, Any]] = {}
        self.starts: dict[str, list[str]] = {}

    def status(self, name: str) -> str:
        if name in self.results:
            return str(self.results[name]["status"])
        return "running" if self.starts.get(name) else "queued"

    def records(self) -> dict[str, dict[str, Any]]:
        out = {}
        for s in self.scenes:
            r = self.results.get(s.name, {})
            starts = self.starts.get(s.name, [])
            out[s.name] = {
                "input": str(s.input),
                "run": str(self.cmd.out / s.name),
                "status": self.status(s.name),
                "seconds": r.get("seconds"),
                "started": r.get("started"),
                "finished": r.get("finished"),
                "node": r.get("node") or (starts[-1] if starts else None),
                "attempts": len(starts),
                "metrics": r.get("metrics", {}),
                "error": r.get("error"),
                "stages": r.get("stages", {}),
            }
        return out

    def write(self, address: str) -> None:
        from recon.atomic import write_json

        write_json(
            self.cmd.out / BATCH_JSON,
            {"version": 1, "dir": str(self.cmd.out), "address": address, "updated": _now(), "scenes": self.records()},
        )

    def stage_marks(self, name: str) -> list[str]:
        """One mark per stage from the run's manifest (read without a lock, as readers do)."""
        from recon.artifacts import RunPaths
        from recon.manifest import read_manifest

        try:
            stages = read_manifest(RunPaths(self.cmd.out / name)).get("stages", {})
        except (ReconError, OSError, ValueError):
            stages = {}
        marks = {"done": "[green]✓[/green]", "running": "[cyan]▶[/cyan]", "failed": "[red]✗[/red]"}
        running = self.status(name) == "running"
        return [
            marks.get(stages.get(st, {}).get("status", ""), "·") if running or st in stages else "·"
            for st in self.stages
        ]

    def table(self, title: str, live: bool) -> Any:
        """The scene x stage progress table (live) or the final summary table."""
        from rich.table import Table

        t = Table(title=title)
        t.add_column("scene", style="bold")
        t.add_column("status")
        t.add_column("node")
        if live:
            for st in self.stages:
                t.add_column(st[:6], justify="center")
        t.add_column("seconds", justify="right")
        if not live:
            t.add_column("psnr", justify="right")
            t.add_column("error")
        colours = {"done": "green", "skipped": "dim", "failed": "red", "running": "cyan", "queued": "dim"}
        for name, r in self.records().items():
            status = f"[{colours[r['status']]}]{r['status']}[/]" + (f" ×{r['attempts']}" if r["attempts"] > 1 else "")
            secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
            psnr = r["metrics"].get("psnr")
            cells = [name, status, r["node"] or ""]
            cells += self.stage_marks(name) if live else []
            cells += [secs] if live else [secs, "" if psnr is None else f"{psnr:.2f}", r["error"] or ""]
            t.add_row(*cells)
        return t


def _submit(cmd: BatchCommand, scenes: list[Scene], starts: StartRecords) -> dict[Any, Scene]:
    """One Ray task per scene: `--cpus-per-scene` CPUs, plus a GPU when the cluster has GPUs."""
    import ray

    from recon.cluster import cluster_gpus

    gpu = 1 if cluster_gpus() > 0 and cmd.device != "cpu" else 0
    task = ray.remote(scene_task).options(
        num_cpus=cmd.cpus_per_scene, num_gpus=gpu, max_retries=TASK_RETRIES, retry_exceptions=False
    )
    return {task.remote(scene_command(cmd, s), cmd.mesh, s.name, starts): s for s in scenes}


def _follow(state: BatchState, refs: dict[Any, Scene], starts: StartRecords, address: str) -> None:
    """Wait for every scene task, refreshing batch.json and the live table as scenes start and finish."""
    import ray
    from rich.live import Live

    from recon.console import console

    title = f"recon batch: {state.cmd.out}"
    last: Any = None
    # The table is drawn once per round and only on a terminal: building and drawing it costs ~11 ms for four
    # scenes, which Live's own 2 Hz refresh thread spent again and again on a core the scenes need.
    shown = console.is_terminal
    live = Live(state.table(title, live=True) if shown else "", console=console, auto_refresh=False, transient=True)
    with live if shown else contextlib.nullcontext():
        while refs:
            done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=1.0)
            for ref in done:
                scene = refs.pop(ref)
                try:
                    state.results[scene.name] = ray.get(ref)
                except ray.exceptions.RayError as e:  # retries exhausted: the scene is lost, the batch goes on
                    state.results[scene.name] = {"status": "failed", "error": f"lost: {one_line(e)}"}
            state.starts = starts.load()
            snapshot = state.records()
            if snapshot != last:
                state.write(address)
                last = snapshot
            if shown:
                live.update(state.table(title, live=True), refresh=True)


def run_batch(cmd: BatchCommand) -> int:
    """`recon batch`: expand the inputs, connect to (or start) the cluster, check DIR is shared, run every
    scene, write DIR/batch.json and print the summary. ReconError when a scene failed (after all finished)."""
    from rich.console import Console

    from recon import cluster
    from recon.console import configure_logging
    from recon.lock import batch_lock
    from recon.pipeline import plan

    configure_logging(0 if cmd.quiet else (2 if cmd.verbose else 1))
    if not cmd.input:
        raise ReconError("recon batch needs at least one INPUT (video, image folder or folder of videos)")
    if cmd.cpus_per_scene < 1:
        raise ReconError(f"--cpus-per-scene must be at least 1, got {cmd.cpus_per_scene}")
    scenes = expand_inputs(cmd.input)
    build_config(scene_command(cmd, scenes[0]))  # a bad option fails here, once, before any cluster starts
    state = BatchState(cmd, scenes, plan("report", ("mesh",) if cmd.mesh else ()))
    with batch_lock(cmd.out), cluster.connect(cmd.address, cmd.node_ip_address, cmd.num_cpus, cmd.temp_dir) as address:
        cluster.check_shared_dir(cmd.out)
        starts = StartRecords.of(cmd.out)
        starts.clear()  # attempts of an earlier (killed) batch on DIR
        state.write(address)
        _follow(state, _submit(cmd, scenes, starts), starts, address)
    Console(highlight=False).print(state.table(f"recon batch: {cmd.out}", live=False))
    failed = [n for n, r in state.records().items() if r["status"] == "failed"]
    if failed:
        raise ReconError(
            f"{len(failed)} of {len(scenes)} scenes failed ({', '.join(failed)}): see {cmd.out}/batch.json"
        )
    return 0
