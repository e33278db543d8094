"""The one reader of image files, folders and .zip archives: training sets, OOD sets and uploads alike.

A folder is scanned with bounds (entries looked at, depth, time); hidden entries and `__MACOSX` are
skipped, unreadable ones counted, and a scan that hits a bound stops with a `ScanError` that says so.
Archives are read with the standard library's zipfile, never extracted to disk, and every limit holds
before anything is decompressed: an entry is refused (and reported, the rest go on) when it is a link,
a nested archive, a path that climbs out ("..") or is absolute, or larger than the per-file limit or
ratio by its header; while streaming, an entry that turns out larger than its header says is cut off at
the limit. A whole archive is refused past its entry count or declared total, so a zip bomb costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import zipfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Iterator

from .errors import DiffoodError
from .images import MAX_UPLOAD_BYTES

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
ARCHIVE_SUFFIXES = {".zip"}
MAX_ENTRIES = 2000  # files in one uploaded archive
MAX_TOTAL_BYTES = 500 * 2**20  # uncompressed, per uploaded archive
MAX_RATIO = 100  # uncompressed / compressed, per entry


class InputError(DiffoodError):
    """A folder or archive that cannot be read as a whole: unreadable, over a limit, a scan stopped early."""


@dataclass(frozen=True)
class Limits:
    """What one archive may hold. Uploads take the defaults; data sets allow more files and bytes, never
    larger single images or higher ratios."""

    entries: int | None = MAX_ENTRIES
    total: int = MAX_TOTAL_BYTES
    ratio: float = MAX_RATIO
    file_bytes: int = MAX_UPLOAD_BYTES


@dataclass(frozen=True)
class ScanLimits:
    """How far a folder scan goes before it stops and says so."""

    entries: int = 200_000  # files and folders looked at
    depth: int = 8  # folders below the one given
    seconds: float = 10.0


SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")  # kernel and device file systems: reading them can block or never end
UPLOADS = Limits()
DATA_SETS = Limits(entries=1_000_000, total=8 * 2**30)
SCAN = ScanLimits()


@dataclass
class Entry:
    name: str  # file path, or "archive.zip/inner/path.png"
    data: bytes | object | None = None  # the file's bytes, or an in-memory image as images.as_pixels gives it
    error: str | None = None  # why it was not read
    relative: str = ""  # the path inside the folder or archive it came from


@dataclass
class Scan:
    """A folder's files (sorted), and what the scan could not look into."""

    root: Path
    files: list[Path] = field(default_factory=list)
    unreadable: int = 0  # folders or entries that could not be listed or stat'ed
    too_deep: int = 0  # folders below the depth limit, not entered

    def notes(self) -> list[str]:
        out = [f"{self.root}: skipped {self.unreadable} unreadable entr{'y' if self.unreadable == 1 else 'ies'}"] if self.unreadable else []
        return out + ([f"{self.root}: did not enter {self.too_deep} folder(s) deeper than {SCAN.depth} levels"]
                      if self.too_deep else [])


def is_archive(name: str) -> bool:
    return Path(name).suffix.lower() in ARCHIVE_SUFFIXES


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _hidden(name: str) -> bool:
    return (name.startswith(".") and name != "..") or name == "__MACOSX"


def scan_folder(root: str | Path, limits: ScanLimits = SCAN) -> Scan:
    """Every regular, non-hidden file under `root`, sorted; raises InputError when the scan hits its
    entry or time limit, or `root` cannot be listed at all."""
    root = Path(root)
    try:
        real = root.resolve()
    except (OSError, RuntimeError) as e:
        raise InputError(f"{root} cannot be read ({getattr(e, 'strerror', None) or e})") from e
    if real == Path(real.anchor):
        raise InputError(f"{root} is the file system's root; choose the folder that holds the images")
    if any(real == Path(p) or real.is_relative_to(p) for p in SYSTEM_FOLDERS):
        raise InputError(f"{root} is a system file system ({real.parts[1]}), not a folder of images")
    scan, seen, start = Scan(root), 0, time.monotonic()
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = list(it)
        except OSError as e:
            if folder == root:
                raise InputError(f"{root} cannot be read ({e.strerror or e})") from e
            scan.unreadable += 1
            continue
        for child in children:
            seen += 1
            if seen > limits.entries or time.monotonic() - start > limits.seconds:
                what = f"{limits.entries:,} entries" if seen > limits.entries else f"{limits.seconds:.0f} s"
                raise InputError(f"{root}: stopped scanning after {what} ({len(scan.files):,} files found so far); "
                                 f"choose a smaller folder or a .zip of the images")
            if _hidden(child.name):
                continue
            try:
                if child.is_dir(follow_symlinks=False):
                    if depth >= limits.depth:
                        scan.too_deep += 1
                    else:
                        stack.append((Path(child.path), depth + 1))
                elif child.is_file():  # regular files only (through links): no FIFOs, devices or sockets
                    scan.files.append(Path(child.path))
            except OSError:
                scan.unreadable += 1
    scan.files.sort()
    return scan


def archive_entries(name: str, source: bytes | str | Path, limits: Limits = UPLOADS,
                    images_only: bool = False) -> Iterator[Entry]:
    """The entries of a zip archive (bytes in memory or a file on disk), each named `name/inner`; with
    `images_only`, other entries come unread (no data, no error). Raises InputError when the archive is
    unreadable or over its entry or total limit."""
    try:
        zf = zipfile.ZipFile(BytesIO(source) if isinstance(source, bytes) else source)
        infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise InputError(f"{name}: not a readable zip archive ({e})") from e
    with zf:
        infos = [i for i in infos if not any(_hidden(p) for p in PurePosixPath(i.filename.replace("\\", "/")).parts)]
        if limits.entries is not None and len(infos) > limits.entries:
            raise InputError(f"{name}: the archive holds {len(infos):,} files; the limit is {limits.entries:,}")
        declared = sum(i.file_size for i in infos)
        if declared > limits.total:
            raise InputError(f"{name}: the archive unpacks to {declared / 2**20:,.0f} MiB; the limit is "
                             f"{limits.total / 2**20:,.0f} MiB")
        total = 0
        for info in sorted(infos, key=lambda i: i.filename):
            entry = Entry(f"{name}/{info.filename}", relative=info.filename)
            if images_only and not is_image_name(info.filename):
                yield entry
                continue
            entry.error = _refusal(info, limits)
            if entry.error is None:
                try:
                    with zf.open(info) as f:
                        content = f.read(limits.file_bytes + 1)  # streamed: never more than the limit decompressed
                except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as e:
                    entry.error = f"unreadable ({e})"
                else:
                    total += len(content)
                    if len(content) > limits.file_bytes or total > limits.total:
                        entry.error = "refused: larger than its header says"
                    else:
                        entry.data = content
            yield entry


def _refusal(info: zipfile.ZipInfo, limits: Limits) -> str | None:
    """Why an archive entry is not read, from its header alone; None when it may be."""
    path = PurePosixPath(info.filename.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or info.filename[1:2] == ":":
        return "refused: the path leaves the archive"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "refused: a symbolic link"
    if is_archive(info.filename):
        return "refused: archives inside archives are not opened"
    if info.file_size > limits.file_bytes:
        return f"{info.file_size:,} bytes is over the {limits.file_bytes / 2**20:.0f} MiB limit per image"
    if info.compress_size and info.file_size / info.compress_size > limits.ratio:
        return f"refused: compression ratio {info.file_size / info.compress_size:.0f} above {limits.ratio:g}"
    return None


def read_archive(name: str, data: bytes, max_entries: int | None = MAX_ENTRIES, max_total: int = MAX_TOTAL_BYTES,
                 max_ratio: float = MAX_RATIO, max_bytes: int = MAX_UPLOAD_BYTES) -> list[Entry]:
    """The entries of an uploaded zip archive; an unreadable or oversized archive is one error entry."""
    return _entries_or_error(name, data, Limits(max_entries, max_total, max_ratio, max_bytes))


def _entries_or_error(name: str, data: bytes, limits: Limits) -> list[Entry]:
    try:
        return list(archive_entries(name, data, limits))
    except InputError as e:
        return [Entry(name, error=str(e).removeprefix(f"{name}: "))]


def source_entries(path: str | Path, limits: Limits = DATA_SETS, scan: ScanLimits = SCAN) -> tuple[Iterator[Entry], Scan | None]:
    """A data set on disk, a folder or a .zip, as entries named by their path inside it (`relative`),
    read one at a time as they are iterated; files that are not images come unread. And the folder's
    scan (None for an archive)."""
    path = Path(path)
    if path.is_dir():
        found = scan_folder(path, scan)
        return _read_files(found.files, path, limits, images_only=True), found
    return archive_entries(path.name, path, limits, images_only=True), None


def _read_files(files: list[Path], root: Path | None, limits: Limits, images_only: bool = False) -> Iterator[Entry]:
    """Files as entries, read one at a time; never a file that is not an image when `images_only`
    (a special file can block a read forever)."""
    for f in files:
        entry = Entry(str(f), relative=f.relative_to(root).as_posix() if root else f.name)
        if images_only and not is_image_name(f.name):
            yield entry
            continue
        try:
            size = f.stat().st_size
            if size > (limits.total if is_archive(f.name) else limits.file_bytes):
                entry.error = f"{size / 2**20:.1f} MiB is over the limit"
            else:
                entry.data = f.read_bytes()
        except OSError as e:
            entry.error = f"unreadable ({e.strerror or e})"
        yield entry


def expand(name: str, data: bytes, limits: Limits = UPLOADS) -> list[Entry]:
    """One uploaded file -> its entries: itself, or an archive's contents."""
    return _entries_or_error(name, data, limits) if is_archive(name) else [Entry(name, data)]


def collect(paths: list[str], limits: Limits = UPLOADS, scan: ScanLimits = SCAN) -> Iterator[Entry]:
    """Files, folders (their images and archives, recursively, in sorted order) and archives on disk ->
    entries; a folder that cannot be scanned is one error entry."""
    for p in map(Path, paths):
        if p.is_dir():
            try:
                files = [f for f in scan_folder(p, scan).files if is_image_name(f.name) or is_archive(f.name)]
            except InputError as e:
                yield Entry(str(p), error=str(e))
                continue
        else:
            files = [p]
        for entry in _read_files(files, None, limits):
            if entry.data is not None and is_archive(entry.name):
                yield from expand(entry.name, entry.data, limits)
            else:
                yield entry


def store_images(entries: list[Entry], root: str | Path) -> tuple[Path, int, list[str]]:
    """The image entries of an upload written into a folder of their own under `root`, named by their
    content's hash (the same upload, the same folder) and numbered, so no name from the upload reaches
    the disk: (folder, images written, why the others were not). The folder reader checks each image."""
    images = [e for e in entries if e.data is not None and is_image_name(e.name)]
    skipped = [f"{e.name}: {e.error or 'not an image file'}" for e in entries if e not in images]
    if not images:
        raise InputError("the upload holds no images" + (f" ({skipped[0]})" if skipped else ""))
    digest = hashlib.sha256(b"".join(hashlib.sha256(e.data).digest() for e in images)).hexdigest()[:16]
    folder = Path(root) / f"upload-{digest}"
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        for i, e in enumerate(images):
            (partial / f"{i:05d}{Path(e.name).suffix.lower()}").write_bytes(e.data)
        os.replace(partial, folder)
    return folder, len(images), skipped
