"""Many images at once: files, folders and .zip archives expanded into named entries, read in memory.

Archives are read with the standard library's zipfile and never extracted to disk. An entry is refused
(and reported, the rest go on) when it is a link, a nested archive, a path that climbs out ("..") or is
absolute, or larger than the per-file limit; a whole archive is refused past its entry count, total
uncompressed size or compression ratio, so a zip bomb costs nothing.
"""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Iterator

from .data import MAX_UPLOAD_BYTES

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
ARCHIVE_SUFFIXES = {".zip"}
MAX_ENTRIES = 2000
MAX_TOTAL_BYTES = 500 * 2**20  # uncompressed, per archive
MAX_RATIO = 100  # uncompressed / compressed, per entry


@dataclass
class Entry:
    name: str  # file path, or "archive.zip/inner/path.png"
    data: bytes | None = None
    error: str | None = None  # why it was not read


def is_archive(name: str) -> bool:
    return Path(name).suffix.lower() in ARCHIVE_SUFFIXES


def read_archive(name: str, data: bytes, max_entries: int = MAX_ENTRIES, max_total: int = MAX_TOTAL_BYTES,
                 max_ratio: float = MAX_RATIO, max_bytes: int = MAX_UPLOAD_BYTES) -> list[Entry]:
    """The entries of a zip archive held in memory; an unreadable or oversized archive is one error entry."""
    try:
        zf = zipfile.ZipFile(BytesIO(data))
        infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        return [Entry(name, error=f"not a readable zip archive ({e})")]
    if len(infos) > max_entries:
        return [Entry(name, error=f"the archive holds {len(infos)} files; the limit is {max_entries}")]
    declared = sum(i.file_size for i in infos)
    if declared > max_total:
        return [Entry(name, error=f"the archive unpacks to {declared / 2**20:.0f} MiB; the limit is {max_total / 2**20:.0f} MiB")]
    out, total = [], 0
    for info in infos:
        inner = f"{name}/{info.filename}"
        path = PurePosixPath(info.filename.replace("\\", "/"))
        mode = info.external_attr >> 16
        if path.is_absolute() or ".." in path.parts or (info.filename[1:2] == ":"):
            out.append(Entry(inner, error="refused: the path leaves the archive"))
        elif stat.S_ISLNK(mode):
            out.append(Entry(inner, error="refused: a symbolic link"))
        elif is_archive(info.filename):
            out.append(Entry(inner, error="refused: archives inside archives are not opened"))
        elif info.file_size > max_bytes:
            out.append(Entry(inner, error=f"{info.file_size:,} bytes is over the {max_bytes / 2**20:.0f} MiB limit per image"))
        elif info.compress_size and info.file_size / info.compress_size > max_ratio:
            out.append(Entry(inner, error=f"refused: compression ratio {info.file_size / info.compress_size:.0f} above {max_ratio}"))
        else:
            try:
                with zf.open(info) as f:
                    content = f.read(max_bytes + 1)  # the header's size may lie
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as e:
                out.append(Entry(inner, error=f"unreadable ({e})"))
                continue
            total += len(content)
            if len(content) > max_bytes or total > max_total:
                out.append(Entry(inner, error="refused: larger than its header says"))
                continue
            out.append(Entry(inner, content))
    return out


def expand(name: str, data: bytes) -> list[Entry]:
    """One uploaded file -> its entries: itself, or an archive's contents."""
    return read_archive(name, data) if is_archive(name) else [Entry(name, data)]


def collect(paths: list[str], max_bytes: int = MAX_UPLOAD_BYTES) -> Iterator[Entry]:
    """Files, folders (their images, recursively, in sorted order) and archives on disk -> entries."""
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES | ARCHIVE_SUFFIXES)
        else:
            files = [p]
        for f in files:
            try:
                size = f.stat().st_size
                if size > (MAX_TOTAL_BYTES if is_archive(f.name) else max_bytes):
                    yield Entry(str(f), error=f"{size / 2**20:.1f} MiB is over the limit")
                    continue
                data = f.read_bytes()
            except OSError as e:
                yield Entry(str(f), error=f"unreadable ({e.strerror or e})")
                continue
            yield from expand(str(f), data)
