"""Ray for recon: start or join a cluster, check the shared output folder, run DVD windows on actors.

Ray is the engine (scheduling, GPUs as resources, retries when a node is lost); this module only wires it
to the pipeline. Ray is imported on first use, so `recon run` never loads it unless asked.

- `start_node`: one `ray start --block` process (head or worker) in its own process group, waited for
  (bounded) and retried when Ray's own start-up times out (its raylet gives the dashboard agent a fixed
  15 s, which a loaded machine can miss); `RayNode.stop()` ends exactly that process group.
- `connect`: the driver's session: joins ADDRESS, or starts a local head sized to the machine and stops it
  again. `node_ip` is passed to the driver and to any node started, as `ray start --node-ip-address` does
  (on Linux Ray replaces 127.0.0.1 with the network address; 127.0.0.2 and up are kept as given).
- `check_shared_dir`: every node writes and reads a probe in the output folder.
- `dvd_windows(cfg)`: the window runner of `--set depth.dvd.workers=N` (depth.dvd.clip).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import ReconError

log = logging.getLogger(__name__)

LOCAL_NODE_IP = "127.0.0.2"
"""Node address of a local cluster when none is given: loopback, kept as given by Ray (127.0.0.1 is not)."""
STARTED = "Ray runtime started."
# Ray's agent port files (ray._raylet.*_PORT_NAME, not in its type stub): SESSION_DIR/<name>_<node id>
DASHBOARD_AGENT_LISTEN_PORT_NAME = "dashboard_agent_listen_port"
METRICS_AGENT_PORT_NAME = "metrics_agent_port"
METRICS_EXPORT_PORT_NAME = "metrics_export_port"
RUNTIME_ENV_AGENT_PORT_NAME = "runtime_env_agent_port"
GROUP_GUARD = ["sh", "-c", 'trap "pkill -KILL -s 0; kill -KILL 0" TERM INT HUP; "$@" & wait', "sh"]
"""Runs `ray start --block` in the background of a shell, in a session of its own, that SIGKILLs every process
of that session when it is signalled: the node's process group (some of Ray's agents outlive a killed `ray
start`) and Ray's workers, which the raylet puts in process groups of their own (they would go on computing,
and writing their runs, for ~2 s after their raylet died). This is how a node is stopped and how it dies with
the process that started it (see `start_node`). pkill is procps' (scripts/setup.sh)."""


def ray_executable() -> str:
    """The `ray` command of this Python environment."""
    here = Path(sys.executable).with_name("ray")
    found = str(here) if here.exists() else shutil.which("ray")
    if not found:
        raise ReconError("the `ray` command is not installed (pip install 'ray[default]')")
    return found


def free_port(ip: str) -> int:
    """A TCP port free on `ip` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


@dataclass
class RayNode:
    """A `ray start --block` process and its process group (every Ray process of the node is in it)."""

    proc: subprocess.Popen
    node_ip: str
    address: str  # GCS address of the cluster (head: its own)
    log_path: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the node's process group (SIGTERM: GROUP_GUARD then SIGKILLs its whole session); SIGKILL goes
        to every process of the session at once, workers included, as when a machine is lost."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            _signal_session(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every process of the node (GROUP_GUARD turns SIGTERM into SIGKILL for its whole session)."""
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def _signal_session(sid: int, sig: int) -> None:
    """Send `sig` to every process of session `sid` (Linux /proc; elsewhere only the group is signalled)."""
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if os.getsid(int(entry.name)) == sid:
                os.kill(int(entry.name), sig)


def start_node(
    node_ip: str,
    temp_dir: str | os.PathLike,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    wrap: Sequence[str] = (),
    timeout: float = 180.0,
    attempts: int = 3,
    fate_share: bool = True,
) -> RayNode:
    """Start a Ray node: the head of a new cluster (address None) or a worker joining `address`.

    `wrap` prefixes the command (e.g. `nsenter -t PID -n --` to start it in a test's network namespace).
    Waits at most `timeout` seconds per attempt for "Ray runtime started."; ReconError when it never comes.
    `fate_share`: the node dies with this process, however it dies (the kernel signals GROUP_GUARD's shell,
    which kills the node's process group), so a killed batch leaves no local cluster behind.
    """
    temp_dir = Path(temp_dir)
    temp_dir.mkdir(parents=True, exist_ok=True)
    last = ""
    for attempt in range(attempts):
        port = free_port(node_ip) if address is None else None
        agent_ports = _agent_ports(node_ip)
        cmd = [*wrap, *GROUP_GUARD, *_start_command(node_ip, temp_dir, address, port, num_cpus, num_gpus, agent_ports)]
        log_path = temp_dir / f"ray-start-{node_ip}-{attempt}.log"
        with open(log_path, "w") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if fate_share and sys.platform.startswith("linux") else None,
            )
        node = RayNode(proc, node_ip, address or f"{node_ip}:{port}", log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if STARTED in log_path.read_text(errors="replace"):
                return node
            _unblock_raylet(proc.pid, agent_ports)
            time.sleep(0.25)
        node.stop(10)
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1] if lines else "no output"
        log.warning(f"ray start on {node_ip} failed (attempt {attempt + 1} of {attempts}): {last}")
    raise ReconError(f"could not start a Ray node on {node_ip}: {last}")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when its parent dies (Linux prctl PR_SET_PDEATHSIG; neither
    subprocess nor Ray offers this for a process we start)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _start_command(
    node_ip: str,
    temp_dir: Path,
    address: str | None,
    port: int | None,
    num_cpus: int | None,
    num_gpus: int | None,
    agent_ports: dict[str, int],
) -> list[str]:
    """`ray start --block ...` for a head (address None, GCS on `port`) or a worker joining `address`, with
    the agents' ports chosen here (`_agent_ports`; see `_unblock_raylet`)."""
    cmd = [ray_executable(), "start", "--block", f"--node-ip-address={node_ip}", f"--temp-dir={temp_dir}"]
    cmd += ["--disable-usage-stats", f"--dashboard-agent-listen-port={agent_ports[DASHBOARD_AGENT_LISTEN_PORT_NAME]}"]
    cmd += [f"--dashboard-agent-grpc-port={agent_ports[METRICS_AGENT_PORT_NAME]}"]
    cmd += [f"--metrics-export-port={agent_ports[METRICS_EXPORT_PORT_NAME]}"]
    cmd += [f"--runtime-env-agent-port={agent_ports[RUNTIME_ENV_AGENT_PORT_NAME]}"]
    if address is None:
        cmd += ["--head", f"--port={port}", "--include-dashboard=false"]
    else:
        cmd += [f"--address={address}"]
    cmd += [f"--num-cpus={num_cpus}"] if num_cpus is not None else []
    return cmd + ([f"--num-gpus={num_gpus}"] if num_gpus is not None else [])


def _agent_ports(node_ip: str) -> dict[str, int]:
    """Free ports for the node's agents, by the name of their port file (ray._raylet.*_PORT_NAME)."""
    names = (DASHBOARD_AGENT_LISTEN_PORT_NAME, METRICS_AGENT_PORT_NAME, METRICS_EXPORT_PORT_NAME)
    return {name: free_port(node_ip) for name in (*names, RUNTIME_ENV_AGENT_PORT_NAME)}


def _unblock_raylet(pgid: int, ports: dict[str, int]) -> None:
    """Work around Ray 2.60's raylet aborting at start-up when its agents have not written their port files
    within a fixed 15 s (their Python imports take longer on a loaded machine; later Ray versions wait
    longer, and no setting changes it here). The ports are ours (`_start_command` passes them), so once the
    node's raylet runs, the files are written with Ray's own writer; the agents write the same values."""
    raylet: Any = importlib.import_module("ray._raylet")  # persist_port is missing from its type stub

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not args or not args[0].endswith("raylet"):
            continue
        flags = dict(a[2:].split("=", 1) for a in args[1:] if a.startswith("--") and "=" in a)
        session, node_id = flags.get("session_dir"), flags.get("node_id")
        for name, port in ports.items():
            if session and node_id and not any(Path(session).glob(f"{name}_{node_id}*")):
                with contextlib.suppress(OSError):
                    raylet.persist_port(session, node_id, name, port)


def _secure_local_cluster() -> None:
    """A local cluster gets Ray's token authentication with a fresh token, inherited by every process it
    starts (unless the user set RAY_AUTH_MODE / RAY_AUTH_TOKEN themselves)."""
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


@contextlib.contextmanager
def connect(
    address: str | None = None,
    node_ip: str | None = None,
    num_cpus: int | None = None,
    temp_dir: str | os.PathLike | None = None,
) -> Iterator[str]:
    """The driver connected to a Ray cluster for the block; yields the cluster's address.

    address None: a local head node on `node_ip` (default 127.0.0.2) with `num_cpus` CPUs (default: all),
    stopped again afterwards. Otherwise joins `address` (started elsewhere with `ray start --head`); a
    loopback address implies the same loopback `node_ip` for the driver.
    """
    node: RayNode | None = None
    own_temp = None
    if address is None:
        node_ip = node_ip or LOCAL_NODE_IP
        _secure_local_cluster()  # before Ray is imported: it reads RAY_AUTH_* then
        temp = Path(temp_dir) if temp_dir else Path(tempfile.mkdtemp(prefix="recon-ray-", dir="/tmp"))
        own_temp = None if temp_dir else temp
        node = start_node(node_ip, temp, num_cpus=num_cpus if num_cpus is not None else os.cpu_count())
        address = node.address
    elif node_ip is None and address.split(":")[0].startswith("127."):
        node_ip = address.split(":")[0]
    import ray

    try:
        try:
            kwargs: dict[str, Any] = {"_node_ip_address": node_ip} if node_ip else {}
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **kwargs)
        except (ConnectionError, RuntimeError) as e:
            raise ReconError(f"cannot join the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
        try:
            yield address
        finally:
            ray.shutdown()
    finally:
        if node is not None:
            node.stop()
        if own_temp is not None:
            shutil.rmtree(own_temp, ignore_errors=True)


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def ray_connected() -> bool:
    """Whether this process is connected to a Ray cluster (without importing Ray when it is not loaded)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def cluster_gpus() -> int:
    """GPUs of the connected cluster (0 without one)."""
    if not ray_connected():
        return 0
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def node_label() -> str:
    """`IP:PID` of this process (which node and worker computed something)."""
    import ray

    ip = ray.util.get_node_ip_address() if ray_connected() else socket.gethostname()
    return f"{ip}:{os.getpid()}"


def use_task_threads() -> int:
    """torch's intra-op threads = the CPUs Ray assigned to this task or actor (one thread per CPU)."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    n = max(1, int(cpus))
    torch.set_num_threads(n)
    return n


# --------------------------------------------------------------------------- shared output folder


def _probe(folder: str, driver_token: str, node_token: str) -> str:
    """On one node: read the driver's probe, write this node's; returns '' or what went wrong."""
    try:
        if Path(folder, f".probe-{driver_token}").read_text() != driver_token:
            return "it sees a different file"
        Path(folder, f".probe-{node_token}").write_text(node_token)
    except OSError as e:
        return e.strerror or type(e).__name__
    return ""


def check_shared_dir(folder: Path, timeout: float = 120.0) -> None:
    """Every alive node reads a probe the driver wrote into `folder` and writes one the driver reads back.

    ReconError `FOLDER is not visible from node IP (...)` naming the first node that cannot.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    mine = folder / f".probe-{token}"
    mine.write_text(token)
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    nodes = alive_nodes()
    tokens = [uuid.uuid4().hex for _ in nodes]
    try:
        refs = [
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(folder.resolve()), token, t
            )
            for n, t in zip(nodes, tokens)
        ]
        for n, t, ref in zip(nodes, tokens, refs):
            ip = n["NodeManagerAddress"]
            try:
                why = ray.get(ref, timeout=timeout)
            except ray.exceptions.GetTimeoutError:
                why = f"no answer within {timeout:.0f} s"
            if not why and Path(folder, f".probe-{t}").read_text() != t:
                why = "its file does not reach this machine"
            if why:
                raise ReconError(f"{folder} is not visible from node {ip} ({why}): the output folder must be shared")
    finally:
        for t in [token, *tokens]:
            with contextlib.suppress(OSError):
                Path(folder, f".probe-{t}").unlink()


# --------------------------------------------------------------------------- DVD windows on actors


class _WindowWorker:
    """A Ray actor holding one DVD model on one device; computes one window per call."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.reg: Any = None
        use_task_threads()

    def ready(self) -> str:
        return node_label()

    def infer(self, clip: np.ndarray, processing_size: tuple[int, int]) -> tuple[np.ndarray, float, str]:
        from depth.dvd.backend import load_regressor
        from depth.dvd.clip import infer_window

        if self.reg is None:
            self.reg, _ = load_regressor(self.cfg)
        t0 = time.perf_counter()
        out = infer_window(self.reg, clip, processing_size)
        self.reg._free()
        return out, time.perf_counter() - t0, node_label()


class RayWindowRunner:
    """depth.dvd.clip.WindowRunner over `workers` workers, each with its own model on its own device (a GPU
    when the cluster has GPUs, else one CPU). From a driver (`recon run`) they are `workers` Ray actors; from
    inside a Ray task (a `recon batch` scene, which already holds a GPU or CPU) the task itself is worker 0
    and `workers - 1` actors help, so it never waits for resources it holds itself. Windows go to whichever
    worker is free; an actor that is not placed (resources busy) gets none, and the window of a lost actor
    is computed again, so the clip always finishes.
    """

    READY_WAIT_S = 120.0
    """From a driver: how long to wait for every actor to come up before using those that did."""

    def __init__(self, cfg: Any, workers: int, local: bool | None = None):
        self.cfg, self.workers = cfg, workers
        self.local = _in_ray_task() if local is None else local
        self.needs_model = self.local  # the backend loads a model here only for a local worker

    def _actors(self, count: int) -> list[Any]:
        import ray

        res = {"num_gpus": 1} if cluster_gpus() > 0 and self.cfg.device != "cpu" else {"num_cpus": 1}
        cls = ray.remote(max_restarts=0)(_WindowWorker)
        return [cls.options(**res).remote(self.cfg) for _ in range(count)]

    def __call__(self, reg: Any, frames: Any, plan: Any, progress: Any = None) -> list[Any]:
        import ray

        from depth.dvd.clip import WindowOutput, infer_window, window_frames

        n = len(plan.spans)
        actors = self._actors(min(self.workers - 1, n - 1) if self.local else min(self.workers, n))
        starting = {a.ready.remote(): a for a in actors}
        idle: list[Any] = [] if self.local else self._wait_ready(starting)
        running: dict[Any, tuple[Any, int]] = {}
        pending = deque(range(n))
        outputs: list[Any] = [None] * n
        done = 0
        try:
            while pending or running:
                idle += self._started(starting)
                while idle and pending:
                    i = pending.popleft()
                    actor = idle.pop()
                    running[actor.infer.remote(window_frames(frames, plan, i), plan.processing_size)] = (actor, i)
                if pending and self.local:  # this process is a worker too
                    i = pending.popleft()
                    t0 = time.perf_counter()
                    out = infer_window(reg, window_frames(frames, plan, i), plan.processing_size)
                    outputs[i] = WindowOutput(out, time.perf_counter() - t0, node_label())
                    done += 1
                elif running or starting:
                    ray.wait([*running, *starting], num_returns=1, timeout=1.0)
                elif pending:  # no worker left (only without a local one)
                    raise ReconError("every DVD window worker was lost")
                finished, idle_again = self._collect(running, outputs, pending)
                idle += idle_again
                done += finished
                if progress is not None:
                    progress(done, n)
        finally:
            for a in actors:
                ray.kill(a)
        return outputs

    def _wait_ready(self, starting: dict[Any, Any]) -> list[Any]:
        """Actors up within READY_WAIT_S (all of them, usually); waits on for the first one if none is."""
        import ray

        deadline = time.monotonic() + self.READY_WAIT_S
        up: list[Any] = []
        while starting and (time.monotonic() < deadline or not up):
            ray.wait(list(starting), num_returns=len(starting), timeout=1.0)
            up += self._started(starting)
        if not up:
            raise ReconError("no DVD window worker could be started on the Ray cluster")
        return up

    @staticmethod
    def _started(starting: dict[Any, Any]) -> list[Any]:
        """Actors whose `ready` answered since the last look (dead ones are dropped)."""
        import ray

        if not starting:
            return []
        ready, _ = ray.wait(list(starting), num_returns=len(starting), timeout=0)
        up = []
        for ref in ready:
            actor = starting.pop(ref)
            try:
                ray.get(ref)
                up.append(actor)
            except ray.exceptions.RayError as e:
                log.warning(f"a DVD window worker did not start: {str(e).splitlines()[0]}")
        return up

    @staticmethod
    def _collect(running: dict[Any, tuple[Any, int]], outputs: list[Any], pending: deque) -> tuple[int, list[Any]]:
        """Windows finished on actors -> outputs; a lost actor's window goes back to `pending`."""
        import ray

        from depth.dvd.clip import WindowOutput
        from depth.errors import DepthError

        if not running:
            return 0, []
        ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
        finished, idle = 0, []
        for ref in ready:
            actor, i = running.pop(ref)
            try:
                out, seconds, who = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the model itself failed: as it would here
                raise DepthError(f"DVD window {i} failed on a worker: {str(e.cause).splitlines()[0]}") from None
            except ray.exceptions.RayError as e:  # the actor or its node is gone: compute the window again
                log.warning(f"DVD window {i}: worker lost ({str(e).splitlines()[0]}); computing it again")
                pending.appendleft(i)
                continue
            outputs[i] = WindowOutput(out, seconds, who)
            finished += 1
            idle.append(actor)
        return finished, idle


def _in_ray_task() -> bool:
    """Whether this process is a Ray worker (running a task or actor), not a driver."""
    import ray

    return ray_connected() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def dvd_workers(cfg: Any) -> int:
    """`depth.dvd.workers`, 0 resolved: the connected cluster's GPUs, 1 without a cluster."""
    return int(cfg.workers) if cfg.workers else max(1, cluster_gpus())


@contextlib.contextmanager
def dvd_windows(cfg: Any) -> Iterator[RayWindowRunner | None]:
    """The window runner for DVD config `cfg` (None = the plain sequential path, for one worker).

    With more than one worker and no Ray connection yet (e.g. `recon run --set depth.dvd.workers=2`), a local
    cluster is started for the block (node address: $RECON_RAY_NODE_IP, default 127.0.0.2).
    """
    if dvd_workers(cfg) <= 1:
        yield None
        return
    if ray_connected():
        yield RayWindowRunner(cfg, dvd_workers(cfg))
        return
    with connect(node_ip=os.environ.get("RECON_RAY_NODE_IP") or None):
        yield RayWindowRunner(cfg, dvd_workers(cfg))


# --------------------------------------------------------------------------- isolation for tests


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


class LoopbackNamespace:
    """A private network namespace with only the loopback interface, for tests and benchmarks.

    A few of Ray's servers (the GCS port, the metrics exporter) listen on every interface whatever the node
    address; started inside this namespace, every Ray process can only listen and talk on loopback.
    `wrap` is the command prefix (`nsenter -t PID -n --`) that runs a command inside. Needs root,
    util-linux (unshare, nsenter) and iproute2 (ip); without them `wrap` is empty and commands run in the
    machine's namespace, still on the 127.0.0.x addresses they are given. On exit every process still in
    the namespace is killed (nothing but the owner's commands enters it), then its holder.

        with LoopbackNamespace() as net:
            subprocess.run([*net.wrap, "ray", "start", "--head", "--node-ip-address=127.0.0.2", ...])
    """

    def __init__(self) -> None:
        self.wrap: list[str] = []
        self._holder: subprocess.Popen | None = None
        self._ns: str | None = None

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", "nsenter", "ip"))

    def __enter__(self) -> LoopbackNamespace:
        if not self.available():
            return self
        script = "ip link set lo up && exec sleep 3600"
        self._holder = subprocess.Popen(["unshare", "--net", "--fork", "sh", "-c", script], start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            kids = _children(self._holder.pid)
            if kids and Path(f"/proc/{kids[0]}/cmdline").read_bytes().startswith(b"sleep"):
                self._ns = os.readlink(f"/proc/{kids[0]}/ns/net")
                self.wrap = ["nsenter", "-t", str(kids[0]), "-n", "--"]
                return self
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("could not create a loopback-only network namespace")

    def pids(self) -> list[int]:
        """Every process inside the namespace (but its holder)."""
        if self._ns is None:
            return []
        holder = {self._holder.pid, *_children(self._holder.pid)} if self._holder else set()
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in holder:
                try:
                    if os.readlink(entry / "ns" / "net") == self._ns:
                        out.append(int(entry.name))
                except OSError:
                    pass
        return out

    def __exit__(self, *exc: object) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._holder is not None:
            os.killpg(self._holder.pid, signal.SIGKILL)
            self._holder.wait(10)


def token_env() -> dict[str, str]:
    """This environment plus Ray token authentication with a fresh token and no usage stats: for the
    processes of one cluster (nodes and drivers) started by a test or benchmark."""
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    return env
