"""The repair policy for real files: what ingest changes in the data, counted per cell and cycle.

Real cycler files hold glitches that are safely repairable; ingest repairs them and records every repair here
(the stage result and ``_manifest.json`` carry the records), or, with ``--strict``, stops at the first one:

========================  ==========  =====================================================================
kind                      action      what
========================  ==========  =====================================================================
``time_reset``            rebased     time goes backwards inside a (cell, cycle): from that row on the cycle's
                                      time continues from the previous row (BatteryLife's rule)
``non_finite_values``     dropped     a row with an empty, NaN or inf value in a required column
``known_bad_cycle``       excluded    a cycle a dataset's maintainers list as corrupt (MATR: BatteryLife's list)
``duplicate_timestamps``  kept        a row repeating the previous row's time inside a cycle (not a repair:
                                      counted so that it can be found)
========================  ==========  =====================================================================

A record is ``{kind, action, cell_key, rows, cycles: {cycle: rows}}``; ``--strict`` refuses every kind but
``kept`` ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, Field

TIME_RESET = "time_reset"
NON_FINITE = "non_finite_values"
KNOWN_BAD_CYCLE = "known_bad_cycle"
DUPLICATE_TIMESTAMPS = "duplicate_timestamps"
ACTIONS = {TIME_RESET: "rebased", NON_FINITE: "dropped", KNOWN_BAD_CYCLE: "excluded", DUPLICATE_TIMESTAMPS: "kept"}


class RepairRecord(BaseModel):
    kind: str = Field(description="what was found, e.g. 'time_reset'")
    action: str = Field(description="what was done: rebased, dropped, excluded or kept")
    cell_key: str
    rows: int = Field(description="rows concerned in this cell")
    cycles: dict[str, int] = Field(description="cycle number -> rows concerned")


def cycle_label(value: float | int | None) -> str:
    """A cycle number as a record key: ``12``, ``12.5``, ``null``."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "null"
    f = float(value)
    return str(int(f)) if f.is_integer() else repr(f)


class RepairLog:
    """Counts of repairs per (kind, cell, cycle), merged across files."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], dict[str, int]] = {}

    def add(self, kind: str, cell: str, cycle: float | int | None, rows: int = 1) -> None:
        if rows <= 0:
            return
        cycles = self._counts.setdefault((kind, cell), {})
        label = cycle_label(cycle)
        cycles[label] = cycles.get(label, 0) + int(rows)

    def add_rows(self, kind: str, cells: Iterable[str], cycles: np.ndarray) -> None:
        """One count per row: ``cells[i]`` and ``cycles[i]`` of each concerned row."""
        cycles = np.asarray(cycles, dtype=np.float64)
        cells = list(cells)
        if not cells:
            return
        pairs: dict[tuple[str, str], int] = {}
        for cell, cycle in zip(cells, cycles):
            key = (cell, cycle_label(cycle))
            pairs[key] = pairs.get(key, 0) + 1
        for (cell, label), n in pairs.items():
            counts = self._counts.setdefault((kind, cell), {})
            counts[label] = counts.get(label, 0) + n

    def merge(self, other: "RepairLog") -> None:
        for (kind, cell), cycles in other._counts.items():
            mine = self._counts.setdefault((kind, cell), {})
            for label, n in cycles.items():
                mine[label] = mine.get(label, 0) + n

    def total(self, kind: str) -> int:
        return sum(sum(c.values()) for (k, _), c in self._counts.items() if k == kind)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (kind, _), cycles in self._counts.items():
            out[kind] = out.get(kind, 0) + sum(cycles.values())
        return out

    def records(self) -> list[RepairRecord]:
        def order(label: str) -> tuple[int, float]:
            return (1, 0.0) if label == "null" else (0, float(label))

        return [RepairRecord(kind=kind, action=ACTIONS.get(kind, "kept"), cell_key=cell,
                             rows=sum(cycles.values()), cycles={k: cycles[k] for k in sorted(cycles, key=order)})
                for (kind, cell), cycles in sorted(self._counts.items())]

    def __bool__(self) -> bool:
        return bool(self._counts)


__all__ = ["RepairLog", "RepairRecord", "TIME_RESET", "NON_FINITE", "KNOWN_BAD_CYCLE", "DUPLICATE_TIMESTAMPS",
           "ACTIONS", "cycle_label"]
