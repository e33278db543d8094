"""Which of the server's paths the dashboard may read: any, when it listens on the loopback address only;
otherwise only those under the folders its operator lists in $DIFFOOD_ALLOWED_ROOTS (os.pathsep-separated),
compared after resolving links, so a link out of an allowed folder is refused like any other path."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from .errors import DiffoodError

ALLOWED_ROOTS_ENV = "DIFFOOD_ALLOWED_ROOTS"


class AccessError(DiffoodError):
    """A path the dashboard's visitors may not read on this server."""


def is_loopback(address: str | None) -> bool:
    """Whether a server bound to `address` is reachable from this machine alone ("" or None: every interface)."""
    if not address:
        return False
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_roots() -> list[Path]:
    """The operator's allowed folders, resolved."""
    return [Path(p).expanduser().resolve() for p in os.environ.get(ALLOWED_ROOTS_ENV, "").split(os.pathsep) if p.strip()]


def server_paths_note(address: str | None) -> str:
    """What a visitor may type as a server path, in one line."""
    if is_loopback(address):
        return "any folder on this machine (the dashboard listens on this machine alone)"
    roots = allowed_roots()
    if roots:
        return "folders under " + ", ".join(map(str, roots))
    return (f"none: this dashboard listens on {address or 'every interface'}, so reading the server's folders is off; "
            f"its operator can allow some with {ALLOWED_ROOTS_ENV}=/data/a{os.pathsep}/data/b")


def check_server_path(path: str, address: str | None) -> Path:
    """The resolved path when a visitor of a server bound to `address` may read it; else AccessError saying
    how the operator allows it."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as e:  # a link that cannot be followed, a loop of links
        raise AccessError(f"{path} cannot be read ({getattr(e, 'strerror', None) or e})") from e
    if is_loopback(address):
        return resolved
    roots = allowed_roots()
    if not roots:
        raise AccessError(f"{path}: reading the server's folders is off because this dashboard listens on "
                          f"{address or 'every interface'}; the operator can allow folders with "
                          f"{ALLOWED_ROOTS_ENV}=/data/a{os.pathsep}/data/b, or upload a .zip as the OOD set")
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise AccessError(f"{path}: outside the folders this server allows ({', '.join(map(str, roots))}; "
                          f"set by {ALLOWED_ROOTS_ENV})")
    return resolved
