"""Rows of many cells, arriving in pieces and in any order, spilled per cell to Arrow IPC files on local disk.

A reader hands each block it reads to :meth:`CellSpiller.write_rows` and forgets it, so memory holds one
block at a time however large the input; afterwards each cell's parts are read back in order, one cell at a
time. Ingest (:class:`msenc_lib.data.unified.UnifiedWriter`) and preprocess's input scan both spill this way.
"""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

MAX_OPEN_FILES = 64  # writers kept open at once (the least recently used one is closed beyond that)


@dataclass(frozen=True)
class SpillPart:
    """One spill file: rows of one cell with one schema, in the order they came."""

    cell_key: str
    path: Path
    schema: pa.Schema

    def read(self) -> pa.Table:
        return ipc.open_file(pa.memory_map(str(self.path))).read_all()


def group_rows(keys: pa.Array | pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """(the distinct keys in first-seen order, each row's index into them)."""
    if not pa.types.is_string(keys.type):
        keys = keys.cast(pa.string())
    encoded = pc.dictionary_encode(keys).combine_chunks()
    return encoded.dictionary.to_pylist(), np.asarray(encoded.indices.to_numpy(zero_copy_only=False))


class CellSpiller:
    """Spills rows per cell into ``folder`` (a temporary folder of its own when None).

    Pieces of one cell go to one file while its schema stays the same; :meth:`mark` / :meth:`rollback`
    forget what came after a point (an input read a second time).
    """

    def __init__(self, folder: str | Path | None = None, prefix: str = ""):
        self._tmp = None if folder is not None else tempfile.TemporaryDirectory(prefix="msenc-spill-")
        self.folder = Path(folder if folder is not None else self._tmp.name)
        self.prefix = prefix
        self.parts: list[SpillPart] = []
        self._open: OrderedDict[str, tuple[Any, Any, SpillPart]] = OrderedDict()

    def write(self, cell_key: str, table: pa.Table) -> None:
        """Append rows of one cell."""
        if table.num_rows == 0:
            return
        table = table.replace_schema_metadata(None)
        current = self._open.get(cell_key)
        if current is not None and current[2].schema != table.schema:
            self._close(cell_key)
            current = None
        if current is None:
            if len(self._open) >= MAX_OPEN_FILES:
                self._close(next(iter(self._open)))
            part = SpillPart(cell_key, self.folder / f"{self.prefix}{len(self.parts):08d}.arrow", table.schema)
            sink = pa.OSFile(str(part.path), "wb")
            # spill files are read once: cheap compression
            writer = ipc.new_file(sink, table.schema, options=ipc.IpcWriteOptions(compression="lz4"))
            current = (writer, sink, part)
            self.parts.append(part)
        self._open[cell_key] = current
        self._open.move_to_end(cell_key)
        current[0].write_table(table)

    def write_grouped(self, table: pa.Table, names: list[str], index: np.ndarray) -> None:
        """Append rows of any cells: row ``i`` belongs to ``names[index[i]]`` (each cell's rows keep their order)."""
        change = np.flatnonzero(np.diff(index)) + 1
        if len(change) + 1 > len(names):  # cells interleaved: group them, keeping each cell's row order
            order = np.argsort(index, kind="stable")
            table = table.take(pa.array(order))
            index = index[order]
            change = np.flatnonzero(np.diff(index)) + 1
        starts = np.concatenate([[0], change]).tolist()
        ends = np.concatenate([change, [len(index)]]).tolist()
        for s, e in zip(starts, ends):
            self.write(names[index[s]], table.slice(s, e - s))

    def write_rows(self, table: pa.Table, id_column: str) -> None:
        """Append rows of any cells, named by ``id_column``."""
        if table.num_rows:
            self.write_grouped(table, *group_rows(table.column(id_column)))

    def _close(self, cell_key: str) -> None:
        writer, sink, _ = self._open.pop(cell_key)
        writer.close()
        sink.close()

    def close(self) -> None:
        """Finish every open file (parts stay readable)."""
        for key in list(self._open):
            self._close(key)

    def mark(self) -> int:
        """A point to :meth:`rollback` to."""
        self.close()
        return len(self.parts)

    def rollback(self, mark: int = 0) -> None:
        """Forget every part written after :meth:`mark` returned ``mark``."""
        self.close()
        for part in self.parts[mark:]:
            part.path.unlink(missing_ok=True)
        del self.parts[mark:]

    def by_cell(self) -> dict[str, list[SpillPart]]:
        """Each cell's parts in order; cells in first-seen order."""
        out: dict[str, list[SpillPart]] = {}
        for part in self.parts:
            out.setdefault(part.cell_key, []).append(part)
        return out

    def cleanup(self) -> None:
        self.close()
        if self._tmp is not None:
            self._tmp.cleanup()
