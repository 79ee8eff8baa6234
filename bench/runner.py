"""Running one measurement: start a server, run a load generator job against
it, sample CPU and memory at the job's marks, stop everything."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bench import procs
from bench.loadgen import Job, Result, child_main
from bench.procs import Target
from bench.report import Results, Row, median_row

SERVER_CORE: int | None = 0
LOAD_CORE: int | None = 1
if len(os.sched_getaffinity(0)) < 2:
    SERVER_CORE = LOAD_CORE = None

T = TypeVar("T")

PIEWIRE = "piewire"
NAIVE_PY = "naive_py"
NAIVE_WS = "naive_ws"
CLUSTER = "cluster"


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float]
    rss: dict[str, int]
    cores: dict[int, tuple[int, int, int]]


@dataclass
class Outcome:
    """A load generator job's result and the samples taken at its marks."""

    result: Result
    marks: dict[str, Snapshot]

    def window(
        self, first: str = "start", last: str = "end"
    ) -> tuple[float, dict[str, float]]:
        """Wall seconds between two marks and each process's CPU % in it."""
        a, b = self.marks[first], self.marks[last]
        wall = b.at - a.at
        pct = {name: (b.cpu[name] - a.cpu[name]) / wall * 100 for name in b.cpu}
        tasks = 0.0
        for core, (task, busy, total) in b.cores.items():
            task0, busy0, total0 = a.cores.get(core, (task, busy, total))
            if total > total0:
                pct[f"core{core}"] = (busy - busy0) / (total - total0) * 100
                tasks += (task - task0) / (total - total0) * 100
        # Whatever ran that is not ours: other processes on the machine.
        pct["others"] = max(0.0, tasks - sum(pct[name] for name in b.cpu))
        return wall, pct

    def cpu_seconds(
        self, names: list[str], first: str = "start", last: str = "end"
    ) -> float:
        a, b = self.marks[first], self.marks[last]
        return sum(b.cpu[n] - a.cpu[n] for n in names)


class MeasurementError(RuntimeError):
    """A measurement that could not finish; the run goes on without it."""


@dataclass
class Settings:
    full: bool
    workdir: Path
    piewire_args: list[str] = field(default_factory=list)
    window: int = 256
    in_flight: int = 640_000
    repeats: int = 1
    nofile: int = 20_000
    servers: list[str] = field(default_factory=list)


class Bench:
    """What every scenario uses: settings, progress, servers, the generator."""

    def __init__(self, settings: Settings, results: Results) -> None:
        self.settings = settings
        self.results = results
        self.started = time.monotonic()
        self.failures = 0
        self._serial = 0
        self.naive_ws_missing = procs.naive_ws_missing()

    def pick(self, quick: T, full: T) -> T:
        """The quick-mode or the full-mode value of a parameter."""
        return full if self.settings.full else quick

    def step(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)

    def servers(self) -> list[str]:
        """The servers every WebSocket scenario runs, piewire first."""
        names = [PIEWIRE, NAIVE_PY]
        if self.naive_ws_missing is None:
            names.append(NAIVE_WS)
        wanted = self.settings.servers
        return [n for n in names if not wanted or n in wanted]

    def runs(self, server: str) -> bool:
        return not self.settings.servers or server in self.settings.servers

    # -- servers ---------------------------------------------------------------

    @contextlib.contextmanager
    def server(self, name: str) -> Iterator[Target]:
        self._serial += 1
        workdir = self.settings.workdir / f"{self._serial:03d}-{name}"
        workdir.mkdir(parents=True)
        if name == PIEWIRE:
            target = procs.start_piewire(
                workdir, SERVER_CORE, self.settings.piewire_args
            )
        elif name == NAIVE_PY:
            target = procs.start_naive_py(workdir, SERVER_CORE)
        elif name == NAIVE_WS:
            target = procs.start_naive_ws(workdir, SERVER_CORE)
        elif name == CLUSTER:
            target = procs.start_cluster(workdir, [SERVER_CORE, SERVER_CORE], LOAD_CORE)
        else:
            raise ValueError(f"unknown server {name}")
        try:
            yield target
        finally:
            target.stop()

    # -- the load generator ------------------------------------------------------

    def loadgen(self, job: Job, target: Target, within: float = 300.0) -> Outcome:
        """Run ``job`` in a fresh generator process pinned to the load core."""
        job = {
            "ports": target.ports,
            "api_key": target.api_key,
            "secret": target.secret,
            "channel": "bench",
            "size": 100,
            "concurrency": 100,
            **job,
        }
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=child_main, args=(child, job, LOAD_CORE), daemon=True
        )
        process.start()
        child.close()
        assert process.pid is not None
        marks: dict[str, Snapshot] = {}
        deadline = time.monotonic() + within
        finished = False
        try:
            while True:
                if not parent.poll(0.25):
                    if not process.is_alive():
                        raise MeasurementError("the load generator died")
                    if time.monotonic() > deadline:
                        raise MeasurementError(f"the job took over {within:.0f}s")
                    for name, proc in target.procs.items():
                        if not proc.alive():
                            raise MeasurementError(f"{name} exited:\n{proc.log_tail()}")
                    continue
                message = parent.recv()
                if message[0] == "mark":
                    marks[message[1]] = self._snapshot(target, process.pid)
                elif message[0] == "progress":
                    self.step(f"  {message[1]}")
                elif message[0] == "result":
                    finished = True
                    return Outcome(message[1], marks)
                elif message[0] == "error":
                    raise MeasurementError(message[1].rstrip().splitlines()[-1])
        except EOFError as exc:
            raise MeasurementError("the load generator closed its pipe") from exc
        finally:
            parent.close()
            if finished:
                process.join(10)
            if process.is_alive():
                process.kill()
                process.join()

    @staticmethod
    def _snapshot(target: Target, loadgen_pid: int) -> Snapshot:
        cpu = {name: proc.cpu() for name, proc in target.procs.items()}
        rss = {name: proc.rss() for name, proc in target.procs.items()}
        with contextlib.suppress(OSError):
            cpu["loadgen"] = procs.cpu_seconds(loadgen_pid)
        cpu["bench"] = procs.cpu_seconds(os.getpid())
        return Snapshot(time.monotonic(), cpu, rss, procs.core_times())

    # -- measurements --------------------------------------------------------------

    def measure(
        self,
        scenario: str,
        variant: str,
        server: str,
        run: Callable[[Target], Row],
        repeats: int | None = None,
    ) -> Row:
        """Run one measurement (repeated in full mode); return the median row."""
        runs: list[Row] = []
        count = repeats or self.settings.repeats
        for repeat in range(count):
            label = f"{scenario} {variant} {server}"
            if count > 1:
                label += f" (run {repeat + 1}/{count})"
            self.step(label)
            try:
                with self.server(server) as target:
                    row = run(target)
            except Exception as exc:
                self.failures += 1
                text = str(exc).strip().splitlines()
                row = {"error": f"{type(exc).__name__}: {text[-1] if text else ''}"}
                self.step(f"  failed: {row['error']}")
            self.results.measurement(scenario, variant, server, repeat, row)
            runs.append(row)
        merged = median_row(runs)
        merged.update(variant=variant, server=server)
        if "error" in merged:
            merged["status"] = f"failed: {merged['error']}"
        return merged
