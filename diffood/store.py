"""One store of computed scores: tables of per-image rows on disk, each filled only where it lacks a part.

A table is one gzip CSV named by the settings that change its values (Table.key), holding every (set, t, draw)
computed so far: asking for another t, draw or set computes only what is missing. One process fills a table
while the others wait for it (a file lock per table); under torchrun rank 0 decides what is missing and
writes, every rank computes its share. A table fills one t at a time over every set, and what is done is
written every `flush_s` seconds, so a reader (another page, another process) sees each t soon after it is done.
A checkpoint ships its tables in `<checkpoint>/evals/`, read when the cache has none.
"""

from __future__ import annotations

import gzip
import json
import time
import warnings
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from filelock import FileLock, Timeout

from . import distributed
from .files import atomic_path, atomic_write_text, move_aside

Progress = Callable[[int, int, str], None]


class CacheWarning(UserWarning):
    """A cached table could not be read; it was moved aside and is recomputed."""


@dataclass(frozen=True)
class Part:
    """One missing piece of a table: one set of images at one t, the draws still to compute."""

    role: str  # id_val, id or ood
    dataset: str
    split: str
    n: int
    t: int
    draws: tuple[int, ...]

    @property
    def images(self) -> int:
        return self.n * len(self.draws)


@dataclass
class Table:
    """One stored table: its name, its key (the file name), the columns its rows must have, the draws it needs
    per t, the settings written beside it, and how a missing part is computed: compute(images, t, draws,
    step) -> rows with index, t, draw and its value columns; step(k) after k images."""

    name: str
    key: str
    columns: list[str]
    need: dict[int, int]
    compute: Callable[[torch.Tensor, int, list[int], Callable[[int], None]], pd.DataFrame]
    sidecar: dict = field(default_factory=dict)
    first: tuple[int, ...] = ()  # t computed before the others (a score's own), then the rest in rising t


@dataclass
class Filled:
    rows: pd.DataFrame
    path: Path | None  # where it was read from or written to
    computed: list[Part]


class ScoreStore:
    """Tables in `cache_dir`, falling back to read-only ones in `shipped` (a checkpoint's evals/)."""

    def __init__(self, cache_dir: str | Path, shipped: str | Path | None = None, recompute: bool = False,
                 flush_s: float = 10.0):
        self.cache_dir, self.recompute, self.flush_s = Path(cache_dir), recompute, flush_s
        self.shipped = Path(shipped) if shipped is not None else None

    def path(self, table: Table) -> Path:
        return self.cache_dir / f"{table.key}.csv.gz"

    def read(self, table: Table) -> tuple[pd.DataFrame, Path | None]:
        """What exists of a table (empty when nothing does), and the file it came from."""
        if self.recompute:
            return pd.DataFrame(columns=table.columns), None
        paths = [self.path(table)] + ([self.shipped / f"{table.key}.csv.gz"] if self.shipped else [])
        return _read_cached(paths, table.columns)

    def missing(self, table: Table, sets: list[tuple[str, str, str, int]], rows: pd.DataFrame | None = None) -> list[Part]:
        """The parts of `sets` ((role, dataset, split, n) each) at every t and draw the table needs that it lacks."""
        rows = self.read(table)[0] if rows is None else rows
        keys = rows[["role", "dataset", "t", "draw"]].drop_duplicates()  # few distinct keys: the pages ask often
        have = set(keys.itertuples(index=False, name=None))
        todo = []
        for role, name, split, n in sets:
            for t, k in table.need.items():
                draws = tuple(d for d in range(k) if (role, name, t, d) not in have)
                if draws:
                    todo.append(Part(role, name, split, n, t, draws))
        # one t at a time over every set, so that each finished t is a complete piece a reader can draw
        return sorted(todo, key=lambda p: (p.t not in table.first, p.t))

    def version(self, table: Table) -> str:
        """Changes whenever the table file read for it does."""
        _, found = self.read(table)
        return f"{found}@{found.stat().st_mtime_ns}" if found else ""

    def fill(self, table: Table, sets, images: Callable[[str, str, int], torch.Tensor],
             progress: Progress | None = None) -> Filled:
        """The table with every missing part of `sets` computed and written, under its file lock.
        `images(dataset, split, n)` gives a set's images in model range."""
        rows, found = self.read(table)
        todo = self.missing(table, sets, rows)
        rows, todo, found = distributed.broadcast((rows, todo, found))  # rank 0's view
        if not todo:
            return Filled(rows, found, [])
        main = distributed.is_main()
        lock = FileLock(str(self.path(table)) + ".lock") if main else None
        if lock is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if progress:
                    progress(0, sum(p.images for p in todo), f"{table.name}: waiting for another process computing it")
                lock.acquire()
        try:
            rows, found = self.read(table)  # another process may have computed it meanwhile
            todo = self.missing(table, sets, rows)
            rows, todo = distributed.broadcast((rows, todo))
            if not todo:
                return Filled(rows, found, [])
            frames = [rows] if len(rows) else []
            total, done, last = sum(p.images for p in todo), 0, time.monotonic()
            loaded = {}
            for p in todo:  # every set read before any is scored: bad data fails at once
                if (p.dataset, p.split, p.n) not in loaded:
                    loaded[p.dataset, p.split, p.n] = images(p.dataset, p.split, p.n)
            for i, p in enumerate(todo):
                def step(k: int, _name=p.dataset) -> None:
                    nonlocal done
                    done += k
                    if progress:
                        progress(done, total, f"{table.name}: {_name}")

                part = table.compute(loaded[p.dataset, p.split, p.n], p.t, list(p.draws), step)
                frames.append(part.assign(dataset=p.dataset, split=p.split, role=p.role))
                if main and i < len(todo) - 1 and time.monotonic() - last > self.flush_s:
                    self._write(table, frames)  # partial results, readable while the rest is computed
                    last = time.monotonic()
            if main:
                self._write(table, frames)
            return Filled(self._concat(table, frames), self.path(table), todo)
        finally:
            if lock is not None:
                lock.release()

    @staticmethod
    def _concat(table: Table, frames: list[pd.DataFrame]) -> pd.DataFrame:
        df = pd.concat([f for f in frames if len(f)], ignore_index=True)
        extra = [c for c in df.columns if c not in table.columns]
        return df[[*table.columns, *extra]].astype({"index": int, "t": int, "draw": int})

    def _write(self, table: Table, frames: list[pd.DataFrame]) -> None:
        path = self.path(table)
        with atomic_path(path) as tmp:
            # gzip level 6: 2 % larger than the default 9, in half the time (a table is rewritten as it fills)
            self._concat(table, frames).to_csv(tmp, index=False, float_format="%.6g",
                                               compression={"method": "gzip", "compresslevel": 6})
        atomic_write_text(path.with_suffix("").with_suffix(".json"), json.dumps(table.sidecar, indent=2, default=str))


@lru_cache(maxsize=16)
def _read_csv(path: str, mtime_ns: int, columns: tuple[str, ...]) -> pd.DataFrame:
    df = pd.read_csv(path)
    missing = set(columns) - {"draw"} - set(df.columns)
    if missing:
        raise ValueError(f"columns {sorted(missing)} missing")
    if "draw" not in df.columns:  # tables from before noise draws: one draw each
        df.insert(list(df.columns).index("t") + 1, "draw", 0)
    extra = [c for c in df.columns if c not in columns]
    return df[[*columns, *extra]].astype({"index": int, "t": int, "draw": int})


def _read_cached(paths: list[Path], columns: list[str]) -> tuple[pd.DataFrame, Path | None]:
    """The first readable table, read once per version of the file (the app asks on every rerun). An
    unreadable one is moved aside, with a warning, so that it is computed afresh."""
    for p in paths:
        if not p.is_file():
            continue
        try:
            return _read_csv(str(p), p.stat().st_mtime_ns, tuple(columns)).copy(), p
        except (OSError, EOFError, ValueError, KeyError, zlib.error, gzip.BadGzipFile, pd.errors.ParserError,
                UnicodeDecodeError) as e:
            try:
                where = f"moved to {move_aside(p)}"
            except OSError:  # a read-only install: leave it, compute into the cache folder instead
                where = "left in place"
            warnings.warn(f"unreadable score table {p} ({type(e).__name__}: {str(e)[:200]}); {where}, recomputing",
                          CacheWarning, stacklevel=3)
    return pd.DataFrame(columns=columns), None

