"""Resumable, verified HTTP(S) downloads, for model-zoo checkpoints and other large files.

`download(url, dst)` writes into ``dst + ".part"`` and renames it to ``dst`` only when the
file is complete and verified, so ``dst`` is never a partial file. A connection that is
cut mid-way is resumed with an HTTP Range request (up to `retries` times in one call; a
later call resumes from the kept ``.part`` too). A server that ignores Range restarts the
file from the beginning. The size is checked against the server's Content-Length /
Content-Range and the caller's `size`; the SHA-256 against the caller's `sha256`. Two
processes downloading the same file take turns through a lock file (on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import IO

from tqdm import tqdm

__all__ = ["download", "sha256_of"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def sha256_of(path: str) -> str:
    """The hex SHA-256 digest of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _offline_hint(url: str, dst: str) -> str:
    return (
        f"If this machine has no network access, download {url} on another machine and "
        f"place it at {dst}: Heron uses a file there without downloading it."
    )


def _verify(path: str, url: str, size: int | None, sha256: str | None) -> None:
    """Raise ValueError naming the URL when the file's size or SHA-256 is not the expected."""
    actual_size = os.path.getsize(path)
    if size is not None and actual_size != size:
        raise ValueError(f"Download of {url} has {actual_size} bytes, expected {size}")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual.lower() != sha256.lower():
            raise ValueError(
                f"Checksum mismatch for {url}: SHA-256 {actual}, expected {sha256.lower()}"
            )


@contextlib.contextmanager
def _lock(path: str) -> Iterator[None]:
    """An exclusive lock through the file `path` (POSIX; elsewhere no lock), removed on
    release. A waiter that wakes up on a lock file already removed tries again, so two
    processes never both hold the lock."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks in the standard library
        yield
        return
    while True:
        f = open(path, "a")  # noqa: SIM115 (held open while the lock is held)
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(f.fileno()).st_ino:
            break
        f.close()  # the holder before us removed this file: lock the new one
    try:
        yield
    finally:
        os.remove(path)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _request(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Open `url`, asking for the bytes from `offset` on when it is > 0."""
    from heron import __version__

    headers = {"User-Agent": f"heron/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _start_offset(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """(where the response's body starts in the file, the file's total size or None)."""
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match and int(match.group(1)) == offset:
            total = match.group(3)
            return offset, None if total == "*" else int(total)
        return -1, None  # a range we did not ask for: start over
    length = response.headers.get("Content-Length")
    return 0, int(length) if length is not None else None


def _copy_body(
    response: http.client.HTTPResponse, out: IO[bytes], bar: tqdm, url: str, start: int
) -> int:
    """Append the response body to `out`; return the bytes written. Raises OSError on a
    cut connection (the bytes written so far stay in `out`)."""
    written = 0
    try:
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    except (http.client.HTTPException, OSError) as e:
        out.flush()
        raise OSError(
            f"Failed to download {url}: connection lost after {start + written} bytes ({e!r})"
        ) from e
    out.flush()
    return written


def _fetch_into(part: str, url: str, timeout: float, progress: bool, dst: str) -> int | None:
    """One attempt: fetch the rest of `url` into `part`. Returns the expected total size
    (None if the server did not say). Raises OSError when the file is still incomplete."""
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    try:
        response = _request(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the part may be all there is: let the caller check
            return offset
        error_cls = FileNotFoundError if e.code == 404 else OSError
        raise error_cls(f"Failed to download {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise OSError(f"Failed to download {url}: {reason}. {_offline_hint(url, dst)}") from e
    with response:
        start, total = _start_offset(response, offset)
        if start < 0:
            raise OSError(f"Failed to download {url}: the server sent an unexpected range")
        if start == 0 and offset:
            logger.info("%s: the server does not resume; starting over", url)
        mode = "ab" if start else "wb"
        bar = tqdm(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            desc=os.path.basename(dst),
            disable=None if progress else True,
            leave=False,
        )
        with bar, open(part, mode) as out:
            written = _copy_body(response, out, bar, url, start)
    if total is not None and start + written != total:
        raise OSError(f"Failed to download {url}: got {start + written} bytes, expected {total}")
    return total


def download(
    url: str,
    dst: str,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> str:
    """Download `url` to the file `dst` (resuming and verifying; see the module notes).

    An existing `dst` is used as it is when it passes the `size`/`sha256` checks (a file
    placed there by hand counts); one that fails them is downloaded again.

    Args:
        url: an http(s) URL.
        dst: the destination file; its folder is created.
        sha256: expected hex SHA-256 of the file, if known.
        size: expected size in bytes, if known.
        retries: how many times a cut connection is resumed within this call.
        timeout: seconds to wait for the server on each request.
        progress: show a progress bar (when the output is a terminal).

    Returns:
        `dst`.

    Raises:
        FileNotFoundError: the server answers 404.
        ValueError: the finished file has the wrong size or SHA-256 (it is deleted).
        OSError: the server cannot be reached (the message says where to place the file by
            hand), or the download is still incomplete after `retries` resumptions (the
            partial file stays for the next call to resume).
    """
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    part = dst + ".part"
    with _lock(dst + ".lock"):
        if os.path.isfile(dst):
            try:
                _verify(dst, url, size, sha256)
                return dst
            except ValueError as e:
                logger.warning("%s; downloading it again", e)
                os.remove(dst)
        for attempt in range(retries + 1):
            try:
                total = _fetch_into(part, url, timeout, progress, dst)
                break
            except OSError as e:
                if isinstance(e, FileNotFoundError) or "unexpected range" in str(e):
                    raise
                if attempt == retries or not os.path.isfile(part):
                    raise
                logger.warning("%s; resuming (%d of %d)", e, attempt + 1, retries)
        expected = size if size is not None else total
        try:
            _verify(part, url, expected, sha256)
        except ValueError:
            os.remove(part)
            raise
        os.replace(part, dst)
    logger.info("Saved %s to %s", url, dst)
    return dst
