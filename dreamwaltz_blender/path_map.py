"""Where a path stored in a shot lives on this machine: the `DREAMWALTZ_PATH_MAP` of mixed-OS farms.

A shot made on one machine names avatars, PLYs and plates by that machine's paths
(`P:\\avatars\\chef`, `/Volumes/show/plates/a.mp4`). A worker that mounts the same storage
elsewhere sets, for example,

    DREAMWALTZ_PATH_MAP='P:\\=/mnt/show/;/Volumes/show/=/mnt/show/'

(`FROM=TO` pairs separated by `;` or newlines, or a JSON object {"FROM": "TO"}). The longest
matching FROM wins; it matches whole path components, ignoring case and slash direction when it
is a Windows path; the rest of the path takes TO's separators. Paths relative to the .blend
(`//...`) resolve against the shot's folder on this machine and need no entry.
Stdlib only (no bpy): the engine and the farm check both use it.
"""

from __future__ import annotations

import json
import os
import re

ENV = "DREAMWALTZ_PATH_MAP"
_WINDOWS = re.compile(r"^([A-Za-z]:|\\\\)")


class PathMapError(ValueError):
    pass


def _is_windows(path: str) -> bool:
    return bool(_WINDOWS.match(path)) or ("\\" in path and "/" not in path)


def is_foreign_absolute(path: str) -> bool:
    """An absolute path of the other family of systems (a Windows drive or UNC path here on
    Linux or macOS, a POSIX path on Windows): only the path map can resolve it here."""
    if os.name == "nt":
        return path.startswith("/") and not path.startswith("//")
    return bool(re.match(r"^([A-Za-z]:[\\/]|\\\\)", path))


def parse(text: str | None) -> list[tuple[str, str]]:
    """(FROM, TO) pairs, longest FROM first."""
    text = (text or "").strip()
    if not text:
        return []
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PathMapError(f"${ENV} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise PathMapError(f"${ENV} as JSON must be an object of strings {{\"FROM\": \"TO\"}}")
        pairs = list(data.items())
    else:
        pairs = []
        for entry in re.split(r"[;\n]", text):
            if not entry.strip():
                continue
            src, sep, dst = entry.strip().partition("=")
            if not sep or not src or not dst:
                raise PathMapError(f"${ENV}: {entry.strip()!r} is not FROM=TO")
            pairs.append((src, dst))
    return sorted(pairs, key=lambda p: len(p[0]), reverse=True)


def _parts(path: str) -> list[str]:
    return [p for p in re.split(r"[\\/]+", path) if p]


def map_path(path: str, pairs: list[tuple[str, str]]) -> str:
    """`path` with the first matching FROM prefix replaced by its TO (unchanged if none matches)."""
    for src, dst in pairs:
        windows = _is_windows(src)
        src_parts, parts = _parts(src), _parts(path)
        if len(parts) < len(src_parts):
            continue
        head = parts[:len(src_parts)]
        same = [a.lower() for a in head] == [b.lower() for b in src_parts] if windows else head == src_parts
        if not same or (not windows and path.startswith("/") != src.startswith("/")):
            continue
        rest = parts[len(src_parts):]
        sep = "\\" if _is_windows(dst) else "/"
        base = dst.rstrip("\\/")
        if not rest:
            return base or dst
        return base + sep + sep.join(rest)
    return path


def current() -> list[tuple[str, str]]:
    return parse(os.environ.get(ENV))


def worker_path(path: str, blend_dir: str | None = None) -> str:
    """A stored path as this machine sees it: mapped by $DREAMWALTZ_PATH_MAP, and `//` paths
    joined to the .blend's folder."""
    if path.startswith("//") and blend_dir is not None:
        return os.path.normpath(os.path.join(blend_dir, path[2:]))
    return map_path(path, current())
