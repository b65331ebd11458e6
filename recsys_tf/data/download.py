"""Cached, checksummed downloads.

:func:`fetch` downloads a URL to a temporary file next to the destination, checks its sha256
when one is given, and only then moves it into place, so a failed or interrupted download
never leaves a partial file where a loader would read it. Nothing is downloaded at import.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request

__all__ = ["DownloadError", "fetch", "sha256_file", "sha256_bytes"]

_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download failed: no network, an HTTP error, a timeout, or a checksum mismatch."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest_path: str, sha256: str | None = None, timeout: float = 20) -> str:
    """Download ``url`` to ``dest_path`` and return ``dest_path``.

    If ``dest_path`` already exists and matches ``sha256`` (or no checksum is given) it is
    reused without touching the network. Otherwise the file is streamed to a temporary file
    in the same directory, verified, and atomically renamed into place.

    Args:
      url: what to download.
      dest_path: where the file ends up; parent directories are created.
      sha256: expected hex digest; a mismatch raises :class:`DownloadError` and leaves
        nothing behind.
      timeout: socket timeout in seconds for connecting and for each read.

    Raises:
      DownloadError: the download failed or the checksum did not match.
    """
    dest_path = os.path.abspath(os.fspath(dest_path))
    expected = sha256.lower() if sha256 else None
    if os.path.isfile(dest_path) and (expected is None or sha256_file(dest_path) == expected):
        return dest_path
    parent = os.path.dirname(dest_path)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dest_path) + ".", suffix=".part", dir=parent)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    while True:
                        chunk = resp.read(_CHUNK)
                        if not chunk:
                            break
                        h.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise DownloadError(f"download of {url} failed: {e}") from e
        got = h.hexdigest()
        if expected is not None and got != expected:
            raise DownloadError(f"download of {url}: sha256 {got} does not match the expected "
                                f"{expected}; the file was discarded")
        os.replace(tmp, dest_path)
        tmp = None
        return dest_path
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)

