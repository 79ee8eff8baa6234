"""``python -m bench``: run the benchmark scenarios and print their tables."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from bench import procs
from bench.report import Results, Table
from bench.runner import (
    LOAD_CORE,
    NAIVE_PY,
    NAIVE_WS,
    PIEWIRE,
    SERVER_CORE,
    Bench,
    Settings,
)
from bench.scenarios import SCENARIOS

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark piewire against naive channel servers in one run.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="full",
        action="store_false",
        help="short runs, one of each (the default; about 6-10 minutes)",
    )
    mode.add_argument(
        "--full",
        dest="full",
        action="store_true",
        help="longer runs, each measurement repeated (the median is shown)",
    )
    parser.set_defaults(full=False)
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--server",
        action="append",
        choices=[PIEWIRE, NAIVE_PY, NAIVE_WS],
        metavar="NAME",
        help="run only this server (repeatable; the cluster scenario always "
        "runs piewire)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON lines file for the results (default bench/results/TIME.jsonl)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="runs of each measurement (default 1 quick, 3 full)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=256,
        help="fan-out: most messages the publisher keeps in flight (default 256)",
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=640_000,
        help="fan-out: most deliveries in flight; the window shrinks to fit "
        "for big channels (default 640,000)",
    )
    parser.add_argument(
        "--piewire-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `piewire serve` (repeatable, e.g. "
        "--piewire-arg=--log-level=WARNING)",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the servers' logs and data directories after the run",
    )
    return parser.parse_args(argv)


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=procs.ROOT,
            timeout=10,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


LEGEND = """\
CPU % is of one core. `server CPU %` and `loadgen CPU %` are the processes'
own user+system time (/proc/PID/stat); `core N busy %` is the whole pinned
core, softirq included (loopback packet work runs there but is charged to no
process); `others CPU %` is time used by processes this run did not start
(a high figure means the numbers are noisy). `saturated` names the side whose
pinned core was at least 90% busy.
"""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or RESULTS / f"{stamp}.jsonl"
    names = args.scenario or list(SCENARIOS)
    nofile = procs.raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="piewire-bench-"))
    settings = Settings(
        full=args.full,
        workdir=workdir,
        piewire_args=args.piewire_arg,
        window=args.window,
        in_flight=args.in_flight,
        repeats=args.repeats or (3 if args.full else 1),
        nofile=nofile,
        servers=args.server or [],
    )
    meta = {
        "mode": "full" if args.full else "quick",
        "scenarios": names,
        "revision": git_revision(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "server_core": SERVER_CORE,
        "loadgen_core": LOAD_CORE,
        "nofile": nofile,
        "piewire_args": args.piewire_arg,
        "window": args.window,
        "in_flight": args.in_flight,
        "repeats": settings.repeats,
    }
    results = Results(out, stamp, meta)
    bench = Bench(settings, results)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tables: list[Table] = []
    bench.step(
        f"{meta['mode']} run of {', '.join(names)}; server on core {SERVER_CORE}, "
        f"load generator on core {LOAD_CORE}; results to {out}"
    )
    busy = procs.busy_now()
    meta_busy = ", ".join(f"core {c} {pct:.0f}%" for c, pct in sorted(busy.items()))
    results.note("machine_busy_before", busy)
    if max(busy.values(), default=0.0) > 15:
        bench.step(
            f"warning: the machine is already busy ({meta_busy}); "
            "other processes will make the figures noisy"
        )
    print(LEGEND, flush=True)
    interrupted = False
    try:
        for name in names:
            started = time.monotonic()
            table = SCENARIOS[name](bench)
            tables.append(table)
            bench.step(f"{name} done in {time.monotonic() - started:.0f}s")
            print("\n" + table.render(), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        bench.step("interrupted: stopping every process")
    finally:
        procs.stop_all()
        results.close()
    report = out.with_suffix(".md")
    report.write_text(
        LEGEND + "\n" + "\n".join(t.render() for t in tables), encoding="utf-8"
    )
    bench.step(f"done: {out} and {report}")
    if args.keep_logs or bench.failures:
        bench.step(f"server logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        return 130
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
