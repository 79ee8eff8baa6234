"""The processes a benchmark run starts, and what /proc says about them.

Every server is started in its own session (a terminal Ctrl-C reaches only the
benchmark, which then stops everything in order), pinned to a core before it
runs any code, and registered so that ``stop_all`` ends it whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.wire import HOST

ROOT = Path(__file__).resolve().parent.parent
BASELINES = Path(__file__).resolve().parent / "baselines"
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"
CLK_TCK = os.sysconf("SC_CLK_TCK")

_live: list[Proc] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def core_times() -> dict[int, tuple[int, int, int]]:
    """Per core: (task, busy, total) clock ticks since boot.

    Task counts user, nice and system time: what processes ran.  Busy adds
    irq, softirq and steal, so it includes the softirq time in which the
    kernel moves loopback packets: that work is done on the sending core but
    is not charged to the sending process.
    """
    cores: dict[int, tuple[int, int, int]] = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if not line.startswith(b"cpu") or line.startswith(b"cpu "):
                continue
            name, *values = line.split()
            ticks = [int(v) for v in values[:8]]
            total = sum(ticks)
            task = ticks[0] + ticks[1] + ticks[2]
            cores[int(name[3:])] = (task, total - ticks[3] - ticks[4], total)
    return cores


def busy_now(seconds: float = 1.0) -> dict[int, float]:
    """How busy each core is right now, in percent, before anything starts."""
    before = core_times()
    time.sleep(seconds)
    after = core_times()
    return {
        core: (busy - before[core][1]) / max(1, total - before[core][2]) * 100
        for core, (_, busy, total) in after.items()
        if core in before
    }


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def raise_nofile(want: int = 200_000) -> int:
    """Raise RLIMIT_NOFILE as far as allowed; children inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    unlimited = hard == resource.RLIM_INFINITY
    try:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (want, hard if unlimited else max(want, hard))
        )
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _pin(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})


@dataclass
class Proc:
    """One started process with its log file."""

    name: str
    argv: list[str]
    log_path: Path
    core: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        core = self.core
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
                preexec_fn=lambda: _pin(core),
                cwd=ROOT,
            )
        _live.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.pid) if self.alive() else 0.0

    def rss(self) -> int:
        return rss_kib(self.pid) if self.alive() else 0

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_port(self, port: int, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((HOST, port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not open port {port}:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        popen = self.popen
        if popen is None:
            return
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    popen.kill()
                popen.wait()
        if self in _live:
            _live.remove(self)


def stop_all() -> None:
    for proc in reversed(list(_live)):
        with contextlib.suppress(Exception):
            proc.stop(grace=5.0)


# -- targets: what the load generator talks to ----------------------------------


@dataclass
class Target:
    """A running server (or cluster) under test."""

    name: str
    ports: list[int]
    procs: dict[str, Proc]
    api_key: str = "bench"
    secret: str = ""

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()


def _piewire_cli(args: list[str]) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "piewire", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
    ).stdout
    record: dict[str, str] = json.loads(out)
    return record


def _piewire_proc(
    name: str, workdir: Path, port: int, core: int | None, args: list[str]
) -> Proc:
    data_dir = workdir / f"{name}-data"
    data_dir.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "piewire", "serve", "--host", HOST]
    argv += ["--port", str(port), "--data-dir", str(data_dir), *args]
    return Proc(name, argv, workdir / f"{name}.log", core)


def start_piewire(workdir: Path, core: int | None, extra: list[str]) -> Target:
    port = free_port()
    proc = _piewire_proc("piewire", workdir, port, core, extra)
    data_dir = workdir / "piewire-data"
    key = _piewire_cli(["keys", "create", "--json", "--data-dir", str(data_dir)])
    proc.start().wait_port(port)
    return Target(
        "piewire", [port], {"server": proc}, key["api_key"], key["api_secret"]
    )


def start_naive_py(workdir: Path, core: int | None) -> Target:
    port = free_port()
    argv = [sys.executable, str(BASELINES / "naive_py.py"), "--host", HOST]
    proc = Proc(
        "naive_py", [*argv, "--port", str(port)], workdir / "naive_py.log", core
    )
    proc.start().wait_port(port)
    return Target("naive_py", [port], {"server": proc})


def node_binary() -> str | None:
    return shutil.which("node")


def naive_ws_missing() -> str | None:
    """Why the Node baseline cannot run here, or None."""
    if node_binary() is None:
        return "node is not installed"
    if not (NODE_MODULES / "ws" / "package.json").exists():
        return "tests/node/node_modules has no ws (run make install)"
    return None


def start_naive_ws(workdir: Path, core: int | None) -> Target:
    port = free_port()
    node = node_binary()
    assert node is not None
    argv = [node, str(BASELINES / "naive_ws.mjs"), "--host", HOST, "--port", str(port)]
    proc = Proc("naive_ws", argv, workdir / "naive_ws.log", core)
    proc.start().wait_port(port)
    return Target("naive_ws", [port], {"server": proc})


def start_redis(workdir: Path, core: int | None) -> tuple[Proc, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make install brings it)")
    port = free_port()
    redis_dir = workdir / "redis"
    redis_dir.mkdir(exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(redis_dir)]
    proc = Proc("redis", argv, workdir / "redis.log", core).start()
    proc.wait_port(port)
    return proc, f"redis://{HOST}:{port}/0"


def start_cluster(
    workdir: Path, node_cores: list[int | None], redis_core: int | None
) -> Target:
    """Redis and one piewire node per entry of ``node_cores``."""
    redis, url = start_redis(workdir, redis_core)
    store = ["--redis-url", url, "--redis-prefix", f"bench{secrets.token_hex(3)}"]
    procs: dict[str, Proc] = {"redis": redis}
    try:
        key = _piewire_cli(["keys", "create", "--json", *store])
        ports = []
        for i, core in enumerate(node_cores, 1):
            port = free_port()
            node = _piewire_proc(f"node{i}", workdir, port, core, store)
            procs[f"node{i}"] = node.start()
            node.wait_port(port)
            ports.append(port)
    except BaseException:
        for proc in reversed(list(procs.values())):
            proc.stop()
        raise
    return Target("cluster", ports, procs, key["api_key"], key["api_secret"])


def soketi_status() -> str:
    """Why Soketi, the open-source peer tried, is not in the tables."""
    for base in (ROOT / "bench" / "node_modules", NODE_MODULES):
        if (base / "@soketi" / "soketi" / "package.json").exists():
            return (
                "installed, but it speaks the Pusher protocol and this "
                "load generator speaks PieSocket v3 only"
            )
    libc = os.confstr("CS_GNU_LIBC_VERSION") or "unknown libc"
    return (
        "did not install/run: `npm install @soketi/soketi@1.6.1` fails, its "
        "uWebSockets.js dependency comes from github.com, not the npm "
        f"registry; its prebuilt module also needs glibc 2.38 ({libc} here)"
    )


@contextlib.contextmanager
def running(target: Target) -> Iterator[Target]:
    try:
        yield target
    finally:
        target.stop()
