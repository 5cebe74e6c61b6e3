"""Finding data files: --data-dir, then $CVAE_DATA, then the user's cache; download when online."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from ..errors import CvaeError


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cvae"


def search_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("CVAE_DATA"):
        dirs.append(Path(os.environ["CVAE_DATA"]))
    dirs.append(cache_dir())
    return dirs


def find_file(subdir: str, names: list[str], data_dir) -> Path | None:
    """The first existing ``DIR/subdir/NAME`` or ``DIR/NAME`` for the names given (in order)."""
    for d in search_dirs(data_dir):
        for name in names:
            for p in (d / subdir / name, d / name):
                if p.is_file():
                    return p
    return None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, expected_sha256: str) -> None:
    """Download ``url`` to ``dest`` atomically, checking its SHA-256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            shutil.copyfileobj(response, out)
        got = sha256(Path(tmp))
        if got != expected_sha256:
            raise CvaeError(f"downloaded {url} but its SHA-256 is {got}, not {expected_sha256}; try again later")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def require(subdir: str, files: dict[str, tuple[str, str]], data_dir, dataset: str) -> dict[str, Path]:
    """Locate every file of a named data set; download the missing ones when allowed.

    ``files`` maps a file name to ``(url, sha256)``. Uncompressed twins (``X`` for ``X.gz``) are accepted.
    """
    found: dict[str, Path] = {}
    missing, errors = [], []
    for name in files:
        alt = [name, name[:-3]] if name.endswith(".gz") else [name, name + ".gz"]
        p = find_file(subdir, alt, data_dir)
        if p is None:
            missing.append(name)
        else:
            found[name] = p
    if missing and os.environ.get("CVAE_OFFLINE", "") not in ("1", "true", "yes"):
        target = cache_dir() / subdir
        for name in list(missing):
            url, digest = files[name]
            try:
                download(url, target / name, digest)
                found[name] = target / name
                missing.remove(name)
            except CvaeError:
                raise
            except Exception as e:  # network down, host unreachable, ...
                errors.append(f"{name}: {e}")
                break
    if missing:
        where = [str(d / subdir) for d in search_dirs(data_dir)]
        why = f" ({' '.join(errors[0].split())[:200]})" if errors else ""
        raise CvaeError(
            f"data set {dataset!r}: missing file(s) {', '.join(missing)} and could not download them{why}. "
            f"Put them in one of: {'; '.join(where)} (or pass --data-dir DIR holding a {subdir}/ folder)"
        )
    return found
