"""Tables printed at the end of each scenario, and the JSON lines file."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

Row = dict[str, Any]

SATURATED_PCT = 90.0


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_1(value: float) -> str:
    return f"{value:,.1f}"


def fmt_2(value: float) -> str:
    return f"{value:,.2f}"


@dataclass
class Column:
    header: str
    key: str
    fmt: Callable[[float], str] = fmt_int


@dataclass
class Table:
    """One scenario's table: a row per (variant, server), and the ratio of
    each row's headline figure to each baseline's in the same variant."""

    title: str
    columns: list[Column]
    headline: str
    higher_is_better: bool
    baselines: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def ratio(self, row: Row, baseline: str) -> str:
        if row["server"] == baseline:
            return "1x"
        base = next(
            (
                r
                for r in self.rows
                if r["server"] == baseline and r["variant"] == row["variant"]
            ),
            None,
        )
        if base is None:
            return ""
        ours, theirs = row.get(self.headline), base.get(self.headline)
        if not _number(ours) or not _number(theirs) or not ours or not theirs:
            return "n/a"
        value = ours / theirs if self.higher_is_better else theirs / ours
        return f"{value:,.2f}x"

    def render(self) -> str:
        headers = ["", "server", *(c.header for c in self.columns)]
        headers += [f"vs {b}" for b in self.baselines]
        lines = [
            f"## {self.title}",
            "",
            "| " + " | ".join(headers) + " |",
            "|" + "|".join("---" for _ in headers) + "|",
        ]
        for row in self.rows:
            cells = [str(row["variant"]), str(row["server"])]
            if "status" in row:
                cells.append(str(row["status"]))
                cells += [""] * (len(self.columns) - 1)
            else:
                for column in self.columns:
                    value = row.get(column.key)
                    cells.append(_cell(value, column.fmt))
            cells += [
                self.ratio(row, b) if "status" not in row else ""
                for b in self.baselines
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if self.baselines:
            better = "higher" if self.higher_is_better else "lower"
            header = next(c.header for c in self.columns if c.key == self.headline)
            lines.append("")
            lines.append(
                f"Ratios compare `{header}` ({better} is better) with each "
                "baseline in the same run; above 1x means this row is better."
            )
        lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines) + "\n"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not (
        isinstance(value, float) and math.isnan(value)
    )


def _cell(value: Any, fmt: Callable[[float], str]) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return "n/a" if isinstance(value, float) and math.isnan(value) else fmt(value)
    return str(value)


def bound(server_pct: float, load_pct: float) -> str:
    """Which side was saturated: a pinned core at least 90% busy."""
    server = server_pct >= SATURATED_PCT
    load = load_pct >= SATURATED_PCT
    if server and load:
        return "both"
    if server:
        return "server"
    if load:
        return "loadgen"
    return "neither"


def median_row(runs: list[Row]) -> Row:
    """The median of each numeric figure over repeated runs; text from the
    last run.  A failed run is left out unless every run failed."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return dict(runs[-1])
    merged: Row = dict(good[-1])
    for key, value in good[-1].items():
        if _number(value) and not isinstance(value, bool):
            values = [r[key] for r in good if _number(r.get(key))]
            merged[key] = statistics.median(values)
    merged["runs"] = len(good)
    return merged


class Results:
    """Appends one JSON object per line: a header, then one per measurement."""

    def __init__(self, path: Path, run_id: str, meta: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.run_id = run_id
        self._file: TextIO = path.open("a", encoding="utf-8")
        self._write({"type": "run", **meta})

    def _write(self, record: dict[str, Any]) -> None:
        record = {"run": self.run_id, "time": time.time(), **record}
        self._file.write(json.dumps(_clean(record), default=str) + "\n")
        self._file.flush()

    def measurement(
        self, scenario: str, variant: str, server: str, repeat: int, metrics: Row
    ) -> None:
        self._write(
            {
                "type": "measurement",
                "scenario": scenario,
                "variant": variant,
                "server": server,
                "repeat": repeat,
                "metrics": metrics,
            }
        )

    def note(self, name: str, value: Any) -> None:
        self._write({"type": "note", "name": name, "value": value})

    def close(self) -> None:
        self._file.close()


def _clean(value: Any) -> Any:
    """NaN and infinities become null, so every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
