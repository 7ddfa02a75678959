"""The cache folder, file checksums and checked downloads."""
from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["cache_dir", "sha256_file", "download", "DownloadError", "ChecksumError"]

CACHE_ENV = "FASTRNN_CACHE"


class DownloadError(OSError):
    """The file could not be fetched (offline, refused, truncated)."""


class ChecksumError(DownloadError):
    """The fetched file is not the expected one."""


def cache_dir() -> Path:
    """``$FASTRNN_CACHE``, else ``$XDG_CACHE_HOME/fastrnn``, else ``~/.cache/fastrnn``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fastrnn"


def sha256_file(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _urlopen(url, timeout):
    """Separate so tests can replace it; nothing in the test suite touches the network."""
    return urllib.request.urlopen(url, timeout=timeout)


def download(url: str, dest, sha256: str = None, *, timeout=60.0, progress=True) -> Path:
    """Fetch ``url`` to ``dest`` with a tqdm bar; verify ``sha256``; publish atomically.

    The data goes to ``dest + '.part'`` first and is renamed only once complete and
    verified, so an interrupted or corrupted download never looks like a cached file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with _urlopen(url, timeout) as resp, open(part, "wb") as out:
            total = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
            total = int(total) if total else None
            from tqdm.auto import tqdm

            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"download {dest.name}", disable=not progress) as bar:
                while True:
                    block = resp.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
            if total is not None and out.tell() != total:
                raise DownloadError(
                    f"download of {url} stopped after {out.tell()} of {total} bytes")
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        if isinstance(exc, DownloadError):
            raise
        raise DownloadError(f"could not download {url}: {exc}") from exc
    digest = h.hexdigest()
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{url} has sha256 {digest}, expected {sha256}; the download is corrupt or the "
            f"file changed upstream (nothing was kept)")
    shutil.move(str(part), str(dest))
    return dest
