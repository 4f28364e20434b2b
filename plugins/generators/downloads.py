"""The weights cache and a careful downloader for published checkpoints.

Weights live in one cache folder, ``$GDX_CACHE`` or ``~/.cache/gdx`` (under a
``weights/`` sub-folder), so a file fetched once, or copied there by hand on an
offline machine, is found again by name. A download goes to a temporary file beside
the target, is checked against its SHA-256 when one is known, and only then renamed
into place: an interrupted or corrupt transfer never leaves a file that looks valid.
Every failure is a :class:`~gdx.errors.CheckpointError` that names the file to obtain
and the folder to put it in, because the reference tool's links are known to be dead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gdx.errors import CheckpointError

#: Seconds to wait for a server before calling a link dead.
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class KnownWeights:
    """A published checkpoint an adapter knows by name (what ``gdx weights`` lists).

    ``size`` (as the publisher states it) and ``sha256`` are ``None`` where they are not
    known (never guessed); ``sha256_prefix`` is a known leading part of the hash
    (torchvision puts one in its file names). ``file`` is the name gdx looks for in
    :func:`cache_dir` when ``in_cache``, else the file or folder to pass as ``option``.
    """

    adapter: str
    name: str
    file: str
    option: str
    note: str = ""
    size: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    in_cache: bool = True


def cache_dir() -> Path:
    """The weights folder: ``$GDX_CACHE/weights`` or ``~/.cache/gdx/weights`` (not created)."""
    root = os.environ.get("GDX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gdx")
    return Path(root).expanduser() / "weights"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, *, sha256: str | None = None, what: str, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically, checking ``sha256`` when given.

    Returns ``dest``. On a dead link, no network, or a checksum mismatch, raises
    CheckpointError saying which file to obtain and where to put it; nothing is left
    at ``dest``.
    """
    dest = Path(dest)
    manual = (
        f"Obtain {dest.name} from a mirror and put it at {dest} (the cache folder is set by "
        f"GDX_CACHE), or pass the file's path as the generator option `weights=...`."
    )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"{what}: cannot create the cache folder {dest.parent} ({exc}). {manual}") from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_url(url, out, what=what, manual=manual, progress=progress)
        if sha256 is not None:
            got = sha256_of(tmp)
            if got.lower() != sha256.lower():
                raise CheckpointError(
                    f"{what}: the file downloaded from {url} has SHA-256 {got}, expected {sha256}; "
                    f"it was discarded (wrong or corrupt mirror). {manual}"
                )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _copy_url(url: str, out: BinaryIO, *, what: str, manual: str, progress: bool) -> None:
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310 - http(s) by design
    except urllib.error.HTTPError as exc:
        raise CheckpointError(f"{what}: download failed, {url} answered HTTP {exc.code} (dead link?). {manual}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CheckpointError(f"{what}: cannot download {url} ({reason}); offline or dead link. {manual}") from None
    with response:
        total = response.headers.get("Content-Length")
        total_bytes = int(total) if total and total.isdigit() else None
        from tqdm.auto import tqdm

        received = 0
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                  disable=not progress, leave=False) as bar:
            while True:
                try:
                    chunk = response.read(1 << 16)
                except OSError as exc:
                    raise CheckpointError(f"{what}: download of {url} broke off ({exc}). {manual}") from None
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if total_bytes is not None and received != total_bytes:
            raise CheckpointError(
                f"{what}: download of {url} stopped at {received} of {total_bytes} bytes. {manual}"
            )
