"""The one resumable sample log: a JSON-lines file that survives a kill at any point.

Evaluation (per sample), budget forcing (per sample and budget) and rejection sampling (per
problem, in shards) write what they finish as they go, so a rerun does only the rest. A kill can
cut the line being written; such a last line is dropped when the log is read (and counted), and
the file is truncated back to its last complete line before anything is appended, so a cut line
never joins a new record. Each append is flushed and ``fsync``-ed: a record that was reported
written survives a crash of the machine, not only of the process.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)


class SampleLog:
    """A JSON-lines file of records (dicts), appended to as work finishes.

    Attributes:
        path: the file (its folder is created on the first append).
        dropped: lines the last :meth:`read` could not parse (a line cut by a kill), 0 or 1 in
            practice; such lines are removed from the file before the next append.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.dropped = 0

    def read(self) -> list[dict]:
        """Every complete record, in file order (an empty list when the file does not exist)."""
        self.dropped = 0
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.dropped += 1
        if self.dropped:
            logger.warning("%s: dropped %d cut or corrupt line(s) (a kill mid-write); that work is redone",
                           self.path, self.dropped)
        return records

    def append(self, records: Iterable[dict]) -> None:
        """Append ``records`` (one line each), then flush and fsync."""
        lines = "".join(json.dumps(r, default=float) + "\n" for r in records)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_partial_tail()
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def _drop_partial_tail(self) -> None:
        """Cut the file back to its last newline (a kill can leave a half-written last line)."""
        if not self.path.exists():
            return
        with self.path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            keep, step = 0, 65536  # find the last newline from the end
            pos = size
            while pos > 0:
                start = max(0, pos - step)
                f.seek(start)
                chunk = f.read(pos - start)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    keep = start + nl + 1
                    break
                pos = start
            f.truncate(keep)
