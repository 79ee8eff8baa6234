"""The eight scenarios.  Each runs its measurements and returns its table."""

from __future__ import annotations

from collections.abc import Callable

from bench.procs import Target, soketi_status
from bench.report import Column, Row, Table, bound, fmt_1, fmt_2
from bench.runner import (
    CLUSTER,
    LOAD_CORE,
    NAIVE_PY,
    NAIVE_WS,
    PIEWIRE,
    SERVER_CORE,
    Bench,
    Outcome,
)

BASELINES = [NAIVE_PY, NAIVE_WS]
SOKETI = "soketi"


def _baselines(b: Bench) -> list[str]:
    return [name for name in BASELINES if name in b.servers()]


def _soketi_row(table: Table) -> None:
    reason = soketi_status()
    table.add({"variant": "", "server": SOKETI, "status": reason.split(":", 1)[0]})
    table.notes.append(f"{SOKETI}: {reason}.")


def _missing_notes(b: Bench, table: Table) -> None:
    if b.naive_ws_missing is not None:
        table.notes.append(f"{NAIVE_WS} left out: {b.naive_ws_missing}.")


def _skipped(b: Bench, table: Table) -> bool:
    """Piewire-only scenarios do nothing when piewire is not selected."""
    if b.runs(PIEWIRE):
        return False
    table.notes.append("skipped: piewire was not among the selected servers.")
    return True


def _cpu_columns() -> list[Column]:
    return [
        Column("server CPU %", "cpu_server"),
        Column(f"core {SERVER_CORE} busy %", "core_server"),
        Column("loadgen CPU %", "cpu_loadgen"),
        Column(f"core {LOAD_CORE} busy %", "core_load"),
        Column("others CPU %", "cpu_others"),
        Column("saturated", "bound"),
    ]


def _window_row(out: Outcome, server_keys: list[str]) -> Row:
    """CPU figures over the measured window: the processes' own CPU time, and
    how busy each pinned core was (softirq included)."""
    _, pct = out.window()
    server_core = pct.get(f"core{SERVER_CORE}")
    load_core = pct.get(f"core{LOAD_CORE}")
    cpu_server = sum(pct[k] for k in server_keys)
    cpu_loadgen = pct.get("loadgen", 0.0)
    return {
        "cpu_server": cpu_server,
        "cpu_loadgen": cpu_loadgen,
        "core_server": server_core,
        "core_load": load_core,
        "bound": bound(
            server_core if server_core is not None else cpu_server,
            load_core if load_core is not None else cpu_loadgen,
        ),
        **{f"cpu_{k}": v for k, v in pct.items()},
    }


# -- 1. fan-out ------------------------------------------------------------------


def _fanout_job(b: Bench, subs: int) -> dict[str, object]:
    window = max(4, min(b.settings.window, b.settings.in_flight // subs))
    return {
        "kind": "fanout",
        "subs": subs,
        "window": window,
        "warmup": b.pick(1.0, 2.0),
        "duration": b.pick(3.0, 10.0),
        "drain": 20.0,
    }


def _fanout_row(out: Outcome, server_keys: list[str]) -> Row:
    result = out.result
    row = {**result, **_window_row(out, server_keys)}
    deliveries = result["deliveries"]
    cpu = out.cpu_seconds(server_keys)
    row["us_per_delivery"] = cpu / deliveries * 1e6 if deliveries else float("nan")
    return row


def fanout(b: Bench) -> Table:
    table = Table(
        "1. Fan-out: one channel, 100-byte messages, publisher kept a window ahead",
        [
            Column("deliveries/s", "deliveries_per_s"),
            Column("messages/s", "messages_per_s"),
            Column("server µs CPU/delivery", "us_per_delivery", fmt_2),
            *_cpu_columns(),
            Column("lost", "lost"),
        ],
        headline="deliveries_per_s",
        higher_is_better=True,
        baselines=_baselines(b),
    )
    for subs in b.pick([100, 1000, 10_000], [100, 1000, 10_000]):
        for server in b.servers():

            def run(target: Target, subs: int = subs) -> Row:
                return _fanout_row(b.loadgen(_fanout_job(b, subs), target), ["server"])

            table.add(b.measure("fanout", f"{subs:,} subs", server, run))
    table.notes.append(
        f"The publisher keeps at most W = min({b.settings.window}, "
        f"{b.settings.in_flight:,} / subscribers) messages ahead of both the "
        "sentinel subscriber and the average subscriber; `lost` counts "
        "deliveries still missing 20 s after publishing stopped."
    )
    _soketi_row(table)
    _missing_notes(b, table)
    return table


# -- 2. latency ------------------------------------------------------------------


def latency(b: Bench) -> Table:
    table = Table(
        "2. Latency: 1,000 subscribers, every receiver times every message (ms)",
        [
            Column("p50", "p50", fmt_2),
            Column("p99", "p99", fmt_2),
            Column("p99.9", "p999", fmt_2),
            Column("max", "max", fmt_2),
            Column("samples", "samples"),
            Column("lost", "lost"),
            *_cpu_columns(),
        ],
        headline="p99",
        higher_is_better=False,
        baselines=_baselines(b),
    )
    duration = b.pick(5.0, 15.0)
    for rate in (20, 200):
        for server in b.servers():

            def run(target: Target, rate: int = rate) -> Row:
                job = {"kind": "latency", "subs": 1000, "rate": rate}
                out = b.loadgen({**job, "duration": duration}, target)
                return {**out.result, **_window_row(out, ["server"])}

            table.add(b.measure("latency", f"{rate} msg/s", server, run))
    table.notes.append(
        "`lost` counts deliveries still missing max(5 s, 2 x the run) after "
        "the last publish; the publisher and every receiver share the "
        "generator's clock."
    )
    _soketi_row(table)
    _missing_notes(b, table)
    return table


# -- 3. chat ---------------------------------------------------------------------


def chat(b: Bench) -> Table:
    rooms, members = 2000, 5
    table = Table(
        f"3. Chat: {rooms:,} channels x {members} members "
        f"({rooms * members:,} connections), each member 1 message/s",
        [
            Column("p50 ms", "p50", fmt_2),
            Column("p99 ms", "p99", fmt_2),
            Column("max ms", "max", fmt_2),
            Column("messages/s", "messages_per_s"),
            Column("deliveries/s", "deliveries_per_s"),
            Column("server µs CPU/delivery", "us_per_delivery", fmt_2),
            *_cpu_columns(),
            Column("lost", "lost"),
        ],
        headline="p99",
        higher_is_better=False,
        baselines=_baselines(b),
    )
    for server in b.servers():

        def run(target: Target) -> Row:
            job = {
                "kind": "chat",
                "channels": rooms,
                "members": members,
                "rate": 1.0,
                "warmup": 2.0,
                "duration": b.pick(8.0, 20.0),
            }
            out = b.loadgen(job, target)
            row = {**out.result, **_window_row(out, ["server"])}
            wall, _ = out.window()
            delivered = out.result["deliveries_per_s"] * wall
            cpu = out.cpu_seconds(["server"])
            row["us_per_delivery"] = cpu / delivered * 1e6 if delivered else 0.0
            return row

        table.add(b.measure("chat", f"{rooms * members:,} conns", server, run))
    _soketi_row(table)
    _missing_notes(b, table)
    return table


# -- 4. idle ---------------------------------------------------------------------


def idle(b: Bench) -> Table:
    # One process can hold no more descriptors than RLIMIT_NOFILE allows; keep
    # a margin for the listening socket, logs and the event loop's own.
    conns = min(20_000, b.settings.nofile - 200)
    table = Table(
        f"4. Idle: {conns:,} connections in 2,000 channels, server memory",
        [
            Column("RSS before MiB", "rss_base_mib", fmt_1),
            Column("RSS after MiB", "rss_after_mib", fmt_1),
            Column("KiB/connection", "kib_per_conn", fmt_2),
            Column("alive", "alive"),
            Column("connect s", "connect_s", fmt_1),
        ],
        headline="kib_per_conn",
        higher_is_better=False,
        baselines=_baselines(b),
    )
    for server in b.servers():

        def run(target: Target) -> Row:
            job = {"kind": "idle", "conns": conns, "channels": 2000, "settle": 3.0}
            out = b.loadgen(job, target)
            base = out.marks["base"].rss["server"]
            after = out.marks["settled"].rss["server"]
            return {
                **out.result,
                "rss_base_mib": base / 1024,
                "rss_after_mib": after / 1024,
                "kib_per_conn": (after - base) / conns,
            }

        table.add(b.measure("idle", f"{conns:,} conns", server, run))
    table.notes.append(
        "RSS growth from 1.5 s after a 200-connection warm-up to 3 s after the "
        "last of the connections opened, divided by their number."
    )
    if conns < 20_000:
        table.notes.append(
            f"{conns:,} connections, not 20,000: RLIMIT_NOFILE is "
            f"{b.settings.nofile:,} here and could not be raised."
        )
    _soketi_row(table)
    _missing_notes(b, table)
    return table


# -- 5. connect ------------------------------------------------------------------


def connect(b: Bench) -> Table:
    concurrency = 64
    table = Table(
        f"5. Connect: handshakes/s, {concurrency} in flight, each connection "
        "closed by the client once accepted",
        [
            Column("handshakes/s", "handshakes_per_s"),
            Column("accepted/s", "valid_per_s"),
            Column("refused/s", "refused_per_s"),
            Column("server µs CPU/handshake", "us_per_handshake", fmt_1),
            *_cpu_columns(),
            Column("unexpected", "unexpected"),
        ],
        headline="handshakes_per_s",
        higher_is_better=True,
        baselines=_baselines(b),
    )

    def runner(bad_every: int) -> Callable[[Target], Row]:
        def run(target: Target) -> Row:
            job = {
                "kind": "connect",
                "concurrency": concurrency,
                "bad_every": bad_every,
                "warmup": 1.0,
                "duration": b.pick(4.0, 10.0),
            }
            out = b.loadgen(job, target)
            row = {**out.result, **_window_row(out, ["server"])}
            wall, _ = out.window()
            count = out.result["handshakes_per_s"] * wall
            cpu = out.cpu_seconds(["server"])
            row["us_per_handshake"] = cpu / count * 1e6 if count else float("nan")
            row.pop("outcomes", None)
            return row

        return run

    for server in b.servers():
        table.add(b.measure("connect", "valid keys", server, runner(0)))
    if not b.runs(PIEWIRE):
        _soketi_row(table)
        return table
    mixed = b.measure("connect", "50% bad keys", PIEWIRE, runner(2))
    table.add(mixed)
    valid = next((r for r in table.rows if r["server"] == PIEWIRE), mixed)
    if "error" not in valid and "error" not in mixed and valid is not mixed:
        table.notes.append(
            "piewire with 50% bad keys: "
            f"{mixed['handshakes_per_s'] / valid['handshakes_per_s']:.2f}x the "
            "valid-key rate, "
            f"{mixed['us_per_handshake'] / valid['us_per_handshake']:.2f}x the CPU "
            "per handshake. A refused connection counts when its error frame "
            "and close 4001 have arrived."
        )
    table.notes.append(
        "The baselines check no key, so they run the valid-key case only; "
        "the 50%-bad row has no baseline to compare with."
    )
    _soketi_row(table)
    _missing_notes(b, table)
    return table


# -- 6. REST ---------------------------------------------------------------------


def rest(b: Bench) -> Table:
    subs, conns = 100, 16
    table = Table(
        f"6. REST publish: {conns} keep-alive HTTP/1.1 connections, one request "
        f"at a time each, to a channel of {subs} subscribers",
        [
            Column("requests/s", "requests_per_s"),
            Column("deliveries/s", "deliveries_per_s"),
            Column("p50 ms", "req_p50", fmt_2),
            Column("p99 ms", "req_p99", fmt_2),
            Column("server µs CPU/request", "us_per_request", fmt_1),
            *_cpu_columns(),
            Column("non-200", "non_200"),
            Column("lost", "lost"),
        ],
        headline="requests_per_s",
        higher_is_better=True,
    )

    def run(target: Target) -> Row:
        job = {
            "kind": "rest",
            "subs": subs,
            "http_conns": conns,
            "warmup": 1.0,
            "duration": b.pick(4.0, 10.0),
        }
        out = b.loadgen(job, target)
        row = {**out.result, **_window_row(out, ["server"])}
        wall, _ = out.window()
        count = out.result["requests_per_s"] * wall
        cpu = out.cpu_seconds(["server"])
        row["us_per_request"] = cpu / count * 1e6 if count else float("nan")
        return row

    if _skipped(b, table):
        return table
    table.add(b.measure("rest", f"{subs} subs", PIEWIRE, run))
    table.notes.append(
        "The baselines have no REST API: piewire is compared only with itself "
        "(earlier runs in the JSON lines files)."
    )
    return table


# -- 7. presence -----------------------------------------------------------------


def presence(b: Bench) -> Table:
    joins = 2000
    table = Table(
        f"7. Presence: {joins:,} presence joins to one channel",
        [
            Column("joins done s", "join_s", fmt_2),
            Column("all rosters right s", "right_s", fmt_2),
            Column("after last join s", "after_last_join_s", fmt_2),
            Column("complete", "complete"),
            Column("sampled exact", "sampled_exact"),
            Column("roster events/conn", "events_per_conn", fmt_1),
            Column("roster MiB", "roster_mib", fmt_1),
            *_cpu_columns(),
        ],
        headline="right_s",
        higher_is_better=False,
    )

    def run(target: Target) -> Row:
        job = {
            "kind": "presence",
            "joins": joins,
            "channel": "bench-presence",
            "timeout": b.pick(60.0, 120.0),
            "quiet": 1.0,
        }
        out = b.loadgen(job, target)
        result = out.result
        row = {**result, **_window_row(out, ["server"])}
        row["sampled_exact"] = f"{result['sampled_right']}/{result['sampled']}"
        return row

    if _skipped(b, table):
        return table
    table.add(b.measure("presence", f"{joins:,} joins", PIEWIRE, run))
    table.notes.append(
        "Clocked from the first connect until the last connection received a "
        "roster listing all members; `complete` counts connections whose "
        "last roster lists everyone, and a sample of rosters is checked "
        "uuid by uuid. Presence is piewire's alone: no baseline."
    )
    return table


# -- 8. cluster ------------------------------------------------------------------


def cluster(b: Bench) -> Table:
    table = Table(
        "8. Cluster: fan-out through two piewire nodes and Redis, publisher on "
        "node 1, subscribers split evenly",
        [
            Column("deliveries/s", "deliveries_per_s"),
            Column("server µs CPU/delivery", "us_per_delivery", fmt_2),
            Column("node1 CPU %", "cpu_node1"),
            Column("node2 CPU %", "cpu_node2"),
            Column("redis CPU %", "cpu_redis"),
            Column(f"core {SERVER_CORE} busy %", "core_server"),
            Column("loadgen CPU %", "cpu_loadgen"),
            Column(f"core {LOAD_CORE} busy %", "core_load"),
            Column("others CPU %", "cpu_others"),
            Column("saturated", "bound"),
            Column("lost", "lost"),
        ],
        headline="deliveries_per_s",
        higher_is_better=True,
        baselines=[PIEWIRE],
    )
    if _skipped(b, table):
        return table
    for subs in b.pick([1000], [1000, 10_000]):
        variant = f"{subs:,} subs"

        def single(target: Target, subs: int = subs) -> Row:
            row = _fanout_row(b.loadgen(_fanout_job(b, subs), target), ["server"])
            row["cpu_node1"] = row["cpu_server"]
            return row

        def two(target: Target, subs: int = subs) -> Row:
            keys = ["node1", "node2", "redis"]
            return _fanout_row(b.loadgen(_fanout_job(b, subs), target), keys)

        table.add(b.measure("cluster", variant, PIEWIRE, single))
        table.add(b.measure("cluster", variant, CLUSTER, two))
    table.notes.append(
        "Both nodes are pinned to the server core, as the single node is, so "
        "the two setups get the same CPU; Redis shares the load core. "
        "µs/delivery counts both nodes and Redis."
    )
    return table


SCENARIOS: dict[str, Callable[[Bench], Table]] = {
    "fanout": fanout,
    "latency": latency,
    "chat": chat,
    "idle": idle,
    "connect": connect,
    "rest": rest,
    "presence": presence,
    "cluster": cluster,
}
