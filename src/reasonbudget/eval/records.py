"""The results file of a sweep: one JSON line per (task, problem, method, budget, seed), append-only.

Each line is written with a single write() on an O_APPEND descriptor and fsync'd per batch, so a killed run
leaves at most one partial trailing line. On load that line is dropped with a warning (and cut from the
file, so the next append starts on a clean line); its unit is recomputed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Key = tuple[str, str, str, int | None, int]


def record_key(r: dict[str, Any]) -> Key:
    return (r["task"], r["problem_id"], r["method"], r["budget"], r["seed"])


class JsonLines:
    """An append-only JSON-lines file that a kill cannot spoil: every journal of a long run (a sweep's results,
    a benchmark's finished groups, a labelling's finished problems) reads and appends through it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def read(self, valid: Callable[[dict[str, Any]], object] = lambda r: True) -> list[dict[str, Any]]:
        """The complete records in order. A line that does not parse, or that `valid` rejects (raising KeyError or
        TypeError), is dropped with a warning; a torn last line is cut from the file and a lost final newline
        restored, so the next append starts on a line of its own."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        records: list[dict[str, Any]] = []
        good_end = pos = 0
        for raw in data.split(b"\n"):
            end = pos + len(raw)
            if raw.strip():
                try:
                    rec = json.loads(raw)
                    valid(rec)
                    records.append(rec)
                    good_end = end
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.warning("%s: dropping a corrupt line at byte %d; it will be recomputed", self.path, pos)
            pos = end + 1
        tail = data[good_end:]
        if tail.strip():  # a torn last line: cut it so the next append starts cleanly
            with self.path.open("r+b") as f:
                f.truncate(good_end + 1 if tail.startswith(b"\n") else good_end)
        if good_end and not data[good_end:good_end + 1] == b"\n":
            with self.path.open("ab") as f:  # a complete last record that lost its newline
                f.write(b"\n")
        return records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Each record one write() on an O_APPEND descriptor, fsync'd per call (a kill tears one line at most)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for r in records:
                os.write(fd, (json.dumps(r, ensure_ascii=False) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


class ResultsFile(JsonLines):
    def load(self) -> dict[Key, dict[str, Any]]:
        """Completed records by key (the first of each); repairs a torn trailing line."""
        records: dict[Key, dict[str, Any]] = {}
        for rec in self.read(valid=record_key):
            records.setdefault(record_key(rec), rec)
        return records
