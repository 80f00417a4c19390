"""Path and URL access in one place: ``PathManager``, with iopath's method names, on fsspec.

Detectron2 code calls ``PathManager.open(path)``, ``PathManager.get_local_path(url)`` and so
on, where ``path`` may be a local path, ``file://...``, an ``http(s)://`` URL or a model-zoo
prefix such as ``detectron2://``. Here:

- local paths use the standard library;
- ``http(s)://`` URLs are read-only: they are downloaded once with ``urllib`` (fsspec's HTTP
  backend needs aiohttp, which Heron does not depend on) into a cache directory
  (``$HERON_CACHE``, default ``~/.cache/heron``) and read from there; downloads resume
  after a cut connection (:func:`heron.utils.download.download`);
- every other protocol (``s3://``, ``gs://``, ``memory://``, ...) goes through fsspec;
- registered prefixes are rewritten first: ``detectron2://`` and ``heron://`` both point at
  Detectron2's model-zoo server.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

import fsspec

from heron.utils.download import download

__all__ = ["HeronPathManager", "PathManager", "get_cache_dir"]

logger = logging.getLogger(__name__)

# Detectron2's model-zoo server; Heron's zoo uses the same checkpoints.
_D2_MODEL_ZOO = "https://dl.fbaipublicfiles.com/detectron2/"
_DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def get_cache_dir(cache_dir: str | None = None) -> str:
    """Return the download cache directory.

    Args:
        cache_dir: an explicit directory; default ``$HERON_CACHE``, else ``~/.cache/heron``.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("HERON_CACHE", os.path.join("~", ".cache", "heron"))
    return os.path.expanduser(cache_dir)


def _is_http(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _strip_file_scheme(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def _cache_path_for_url(url: str, cache_dir: str) -> str:
    """A stable file name for ``url`` under ``cache_dir``: ``<host>/<url path>``.

    A query string adds a short hash to the name, so different queries do not collide.

    Raises:
        ValueError: if the URL path has no file name or climbs out with "..".
    """
    parsed = urllib.parse.urlparse(url)
    rel = posixpath.normpath(urllib.parse.unquote(parsed.path).lstrip("/"))
    if rel in (".", "") or rel.startswith("..") or rel.endswith("/"):
        raise ValueError(f"Cannot derive a cache file name from URL {url!r}")
    if parsed.query:
        digest = hashlib.sha256(parsed.query.encode()).hexdigest()[:10]
        rel = f"{rel}.{digest}"
    host = parsed.netloc.replace(":", "_")
    return os.path.join(cache_dir, host, *rel.split("/"))


class HeronPathManager:
    """Opens, lists, copies and downloads paths and URLs (iopath's ``PathManager`` API)."""

    def __init__(self) -> None:
        self._prefixes: dict[str, str] = {}

    # ------------------------------------------------------------ prefixes

    def register_prefix(self, prefix: str, target: str) -> None:
        """Make paths starting with ``prefix`` resolve to ``target`` + the rest.

        Args:
            prefix: e.g. ``"detectron2://"``.
            target: what replaces it, e.g. ``"https://dl.fbaipublicfiles.com/detectron2/"``.

        Raises:
            ValueError: if ``prefix`` is empty, or already mapped to another target.
        """
        if not prefix:
            raise ValueError("register_prefix: prefix must be a non-empty string")
        existing = self._prefixes.get(prefix)
        if existing is not None and existing != target:
            raise ValueError(
                f"register_prefix: {prefix!r} already maps to {existing!r}, not {target!r}"
            )
        self._prefixes[prefix] = target

    def _resolve(self, path: str | os.PathLike) -> str:
        """Apply the registered prefixes (longest first, repeatedly) to ``path``."""
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"path must be a str or os.PathLike of str, got {type(path).__name__}")
        for _ in range(len(self._prefixes) + 1):  # bounded: targets may use other prefixes
            for prefix in sorted(self._prefixes, key=len, reverse=True):
                if path.startswith(prefix):
                    path = self._prefixes[prefix] + path[len(prefix) :]
                    break
            else:
                return path
        raise ValueError(f"Registered prefixes form a cycle while resolving {path!r}")

    # ------------------------------------------------------------ reading and writing

    def open(
        self, path: str | os.PathLike, mode: str = "r", buffering: int = -1, **kwargs: Any
    ) -> IO[Any]:
        """Open a file; arguments as the built-in ``open``.

        URLs are downloaded into the cache first and opened read-only.

        Raises:
            io.UnsupportedOperation: when writing to an http(s) URL.
        """
        path = self._resolve(path)
        if _is_http(path):
            if any(c in mode for c in "wax+"):
                raise io.UnsupportedOperation(f"Cannot open URL {path!r} with mode {mode!r}")
            return open(self.get_local_path(path), mode, buffering, **kwargs)
        if _is_local(path):
            return open(_strip_file_scheme(path), mode, buffering, **kwargs)
        fs, fs_path = fsspec.core.url_to_fs(path)
        return fs.open(fs_path, mode, **kwargs)

    def get_local_path(self, path: str | os.PathLike, force: bool = False, **kwargs: Any) -> str:
        """Return a local file path holding the content of ``path``.

        Local paths come back as they are (without ``file://``). ``http(s)`` URLs are
        downloaded once into the cache and later calls reuse the cached file; other fsspec
        protocols are copied into the cache the same way.

        Args:
            path: a path, URL or prefixed path.
            force: download again even if the cache has the file.
            kwargs: ``cache_dir`` to override the cache directory.

        Raises:
            FileNotFoundError: if the server answers 404 (the message names the URL).
            OSError: if the download fails otherwise (an incomplete download stays as
                ``<cache file>.part`` and the next call resumes it).
        """
        path = self._resolve(path)
        if _is_local(path):
            return _strip_file_scheme(path)
        cache_file = _cache_path_for_url(path, get_cache_dir(kwargs.get("cache_dir")))
        if os.path.isfile(cache_file) and not force:
            return cache_file
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        if _is_http(path):
            if force and os.path.isfile(cache_file):
                os.remove(cache_file)
            download(path, cache_file)
        else:
            _download_atomic(path, cache_file, self._write_fsspec)
        return cache_file

    @staticmethod
    def _write_fsspec(url: str, out: IO[bytes]) -> None:
        logger.info("Copying %s ...", url)
        with fsspec.open(url, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)

    # ------------------------------------------------------------ queries

    def exists(self, path: str | os.PathLike, **kwargs: Any) -> bool:
        """Return whether ``path`` exists (for URLs: whether a HEAD request succeeds)."""
        path = self._resolve(path)
        if _is_http(path):
            return _http_head_ok(path)
        if _is_local(path):
            return os.path.exists(_strip_file_scheme(path))
        fs, fs_path = fsspec.core.url_to_fs(path)
        return fs.exists(fs_path)

    def isfile(self, path: str | os.PathLike, **kwargs: Any) -> bool:
        """Return whether ``path`` is a file (for URLs: whether a HEAD request succeeds)."""
        path = self._resolve(path)
        if _is_http(path):
            return _http_head_ok(path)
        if _is_local(path):
            return os.path.isfile(_strip_file_scheme(path))
        fs, fs_path = fsspec.core.url_to_fs(path)
        return fs.isfile(fs_path)

    def isdir(self, path: str | os.PathLike, **kwargs: Any) -> bool:
        """Return whether ``path`` is a directory (never for URLs)."""
        path = self._resolve(path)
        if _is_http(path):
            return False
        if _is_local(path):
            return os.path.isdir(_strip_file_scheme(path))
        fs, fs_path = fsspec.core.url_to_fs(path)
        return fs.isdir(fs_path)

    def ls(self, path: str | os.PathLike, **kwargs: Any) -> list[str]:
        """Return the names (not full paths) of the entries of directory ``path``, sorted."""
        path = self._no_http(path, "ls")
        if _is_local(path):
            return sorted(os.listdir(_strip_file_scheme(path)))
        fs, fs_path = fsspec.core.url_to_fs(path)
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(fs_path, detail=False))

    def mkdirs(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Create directory ``path`` and its parents; no error if it exists."""
        path = self._no_http(path, "mkdirs")
        if _is_local(path):
            os.makedirs(_strip_file_scheme(path), exist_ok=True)
            return
        fs, fs_path = fsspec.core.url_to_fs(path)
        fs.makedirs(fs_path, exist_ok=True)

    def rm(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Remove the file ``path``.

        Raises:
            FileNotFoundError: if it does not exist.
            IsADirectoryError: if it is a directory.
        """
        path = self._no_http(path, "rm")
        if _is_local(path):
            local = _strip_file_scheme(path)
            if os.path.isdir(local):
                raise IsADirectoryError(f"rm removes files only; {local!r} is a directory")
            os.remove(local)
            return
        fs, fs_path = fsspec.core.url_to_fs(path)
        if fs.isdir(fs_path):
            raise IsADirectoryError(f"rm removes files only; {path!r} is a directory")
        if not fs.exists(fs_path):
            raise FileNotFoundError(f"rm: no such file {path!r}")
        fs.rm(fs_path)

    def copy(
        self,
        src_path: str | os.PathLike,
        dst_path: str | os.PathLike,
        overwrite: bool = False,
        **kwargs: Any,
    ) -> bool:
        """Copy the file ``src_path`` to ``dst_path`` (any supported source and destination).

        Raises:
            FileExistsError: if ``dst_path`` exists and ``overwrite`` is False.

        Returns:
            True, as iopath does on success.
        """
        src = self._resolve(src_path)
        dst = self._no_http(dst_path, "copy to")
        if not overwrite and self.exists(dst):
            raise FileExistsError(f"copy: destination {dst!r} exists and overwrite=False")
        with self.open(src, "rb") as fin, self.open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
        return True

    def _no_http(self, path: str | os.PathLike, op: str) -> str:
        resolved = self._resolve(path)
        if _is_http(resolved):
            raise io.UnsupportedOperation(f"{op} is not supported for URL {resolved!r}")
        return resolved


def _download_atomic(url: str, dst: str, write: Any) -> None:
    """Run ``write(url, file)`` into a temporary file next to ``dst``, then rename it.

    Readers never see a partial file, and a failed download leaves nothing behind.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix=os.path.basename(dst) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            write(url, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cached download is an ordinary file
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    logger.info("Saved %s to %s", url, dst)


def _http_head_ok(url: str) -> bool:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


PathManager = HeronPathManager()
PathManager.register_prefix("detectron2://", _D2_MODEL_ZOO)
PathManager.register_prefix("heron://", _D2_MODEL_ZOO)
