from __future__ import annotations

import io
import os
import socket
import threading
import uuid
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from heron.utils.file_io import (
    HeronPathManager,
    PathManager,
    _cache_path_for_url,
    get_cache_dir,
)

# ---------------------------------------------------------------- a real HTTP server


class _Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []  # (method, path)
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _record(self):
                server.requests.append((self.command, self.path))

            def do_GET(self):
                self._record()
                if self.path == "/truncated.bin":
                    # promise 100 bytes, send 10, then hang up
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    self.wfile.write(b"0123456789")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                super().do_GET()

            def do_HEAD(self):
                self._record()
                super().do_HEAD()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def gets(self, path: str) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and p == "/" + path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("HERON_CACHE", str(d))
    return d


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("no_proxy", "NO_PROXY"):  # never route 127.0.0.1 through a proxy
        monkeypatch.setenv(var, "*")
    root = tmp_path / "srv"
    (root / "models").mkdir(parents=True)
    (root / "models" / "weights.pkl").write_bytes(b"\x00\x01weights\xff")
    (root / "notes.txt").write_text("line one\nline two\n")
    (root / "empty.bin").write_bytes(b"")
    srv = _Server(root)
    yield srv
    srv.close()


def _files_under(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file()] if d.exists() else []


# ---------------------------------------------------------------- downloads


def test_get_local_path_downloads_url_once_into_cache(server, cache_dir):
    url = server.url("models/weights.pkl")
    local = PathManager.get_local_path(url)
    assert Path(local).read_bytes() == b"\x00\x01weights\xff"
    assert Path(local) == cache_dir / f"127.0.0.1_{server.port}" / "models" / "weights.pkl"
    assert PathManager.get_local_path(url) == local  # second call: cache hit
    assert server.gets("models/weights.pkl") == 1
    assert _files_under(cache_dir) == [Path(local)]  # no temporary files left over


def test_get_local_path_force_downloads_again(server, cache_dir):
    url = server.url("notes.txt")
    local = PathManager.get_local_path(url)
    (server.root / "notes.txt").write_text("changed\n")
    assert Path(PathManager.get_local_path(url)).read_text() == "line one\nline two\n"
    assert Path(PathManager.get_local_path(url, force=True)).read_text() == "changed\n"
    assert server.gets("notes.txt") == 2
    assert PathManager.get_local_path(url) == local


def test_get_local_path_explicit_cache_dir(server, tmp_path):
    other = tmp_path / "other_cache"
    local = PathManager.get_local_path(server.url("notes.txt"), cache_dir=str(other))
    assert Path(local).parent == other / f"127.0.0.1_{server.port}"


def test_download_of_empty_file_gives_empty_cached_file(server, cache_dir):
    local = PathManager.get_local_path(server.url("empty.bin"))
    assert Path(local).read_bytes() == b""


def test_open_url_reads_cached_copy_in_text_and_binary(server, cache_dir):
    url = server.url("notes.txt")
    with PathManager.open(url) as f:
        assert f.readlines() == ["line one\n", "line two\n"]
    with PathManager.open(url, "rb") as f:
        assert f.read() == b"line one\nline two\n"
    assert server.gets("notes.txt") == 1


def test_download_404_names_the_url_and_leaves_no_file(server, cache_dir):
    url = server.url("models/missing.pkl")
    with pytest.raises(FileNotFoundError, match=rf"{url}: HTTP 404"):
        PathManager.get_local_path(url)
    assert _files_under(cache_dir) == []


def test_truncated_download_raises_and_keeps_only_the_partial_file(server, cache_dir):
    url = server.url("truncated.bin")
    with pytest.raises(OSError, match=rf"Failed to download {url}"):
        PathManager.get_local_path(url)
    # no cached file, only the ".part" a later call resumes from
    names = sorted(p.name for p in _files_under(cache_dir))
    assert names == ["truncated.bin.part"]


def test_unreachable_server_raises_os_error_naming_url(cache_dir, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    with socket.socket() as s:  # a port that nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.pkl"
    with pytest.raises(OSError, match=rf"Failed to download {url}.*place it at"):
        PathManager.get_local_path(url)
    assert _files_under(cache_dir) == []


def test_url_write_and_directory_operations_are_unsupported(server):
    url = server.url("notes.txt")
    with pytest.raises(io.UnsupportedOperation, match="mode 'w'"):
        PathManager.open(url, "w")
    for op in (PathManager.ls, PathManager.mkdirs, PathManager.rm):
        with pytest.raises(io.UnsupportedOperation, match="not supported for URL"):
            op(url)


def test_exists_and_isfile_on_urls_use_head_requests(server):
    assert PathManager.exists(server.url("notes.txt"))
    assert PathManager.isfile(server.url("models/weights.pkl"))
    assert not PathManager.exists(server.url("nope.txt"))
    assert not PathManager.isdir(server.url("models/weights.pkl"))
    assert server.gets("notes.txt") == 0  # HEAD only, nothing downloaded


# ---------------------------------------------------------------- prefixes


def test_model_zoo_prefixes_resolve_to_detectron2_server():
    base = "https://dl.fbaipublicfiles.com/detectron2/"
    assert PathManager._resolve("detectron2://ImageNetPretrained/MSRA/R-50.pkl") == (
        base + "ImageNetPretrained/MSRA/R-50.pkl"
    )
    assert PathManager._resolve("heron://COCO-Detection/x.pkl") == base + "COCO-Detection/x.pkl"
    assert PathManager._resolve("/plain/path") == "/plain/path"


def test_registered_prefix_downloads_through_the_server(server, cache_dir):
    pm = HeronPathManager()
    pm.register_prefix("zoo://", server.url(""))
    local = pm.get_local_path("zoo://models/weights.pkl")
    assert Path(local).read_bytes() == b"\x00\x01weights\xff"
    assert server.gets("models/weights.pkl") == 1


def test_longest_prefix_wins_and_targets_may_chain():
    pm = HeronPathManager()
    pm.register_prefix("a://", "/root/a/")
    pm.register_prefix("a://deep/", "b://")
    pm.register_prefix("b://", "/root/b/")
    assert pm._resolve("a://x") == "/root/a/x"
    assert pm._resolve("a://deep/y") == "/root/b/y"


def test_register_prefix_conflict_and_empty_raise():
    pm = HeronPathManager()
    pm.register_prefix("p://", "/one/")
    pm.register_prefix("p://", "/one/")  # same mapping again is fine
    with pytest.raises(ValueError, match=r"'p://' already maps to '/one/', not '/two/'"):
        pm.register_prefix("p://", "/two/")
    with pytest.raises(ValueError, match="non-empty"):
        pm.register_prefix("", "/x/")


def test_prefix_cycle_raises():
    pm = HeronPathManager()
    pm.register_prefix("x://", "y://")
    pm.register_prefix("y://", "x://")
    with pytest.raises(ValueError, match="cycle"):
        pm._resolve("x://file")


# ---------------------------------------------------------------- cache names


def test_cache_path_is_host_plus_url_path():
    path = _cache_path_for_url("https://example.com:8080/a/b%20c.pkl", "/cache")
    assert path == os.path.join("/cache", "example.com_8080", "a", "b c.pkl")


def test_cache_path_distinguishes_query_strings():
    p1 = _cache_path_for_url("https://h/a.pkl?v=1", "/c")
    p2 = _cache_path_for_url("https://h/a.pkl?v=2", "/c")
    assert p1 != p2
    assert p1.startswith(os.path.join("/c", "h", "a.pkl."))
    assert p1 == _cache_path_for_url("https://h/a.pkl?v=1", "/c")  # stable


@pytest.mark.parametrize("url", ["https://h/", "https://h", "https://h/../../etc/passwd"])
def test_cache_path_rejects_urls_without_a_safe_file_name(url):
    with pytest.raises(ValueError, match="Cannot derive a cache file name"):
        _cache_path_for_url(url, "/c")


def test_get_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("HERON_CACHE", str(tmp_path / "hc"))
    assert get_cache_dir() == str(tmp_path / "hc")
    assert get_cache_dir("/explicit") == "/explicit"
    monkeypatch.delenv("HERON_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_cache_dir() == os.path.join(str(tmp_path), ".cache", "heron")


# ---------------------------------------------------------------- local files


def test_get_local_path_of_local_paths_is_unchanged(tmp_path):
    p = tmp_path / "a.txt"
    assert PathManager.get_local_path(str(p)) == str(p)
    assert PathManager.get_local_path(p) == str(p)
    assert PathManager.get_local_path("file://" + str(p)) == str(p)


def test_local_write_read_and_queries(tmp_path):
    d = tmp_path / "x" / "y"
    PathManager.mkdirs(str(d))
    PathManager.mkdirs(str(d))  # already there: no error
    with PathManager.open(str(d / "b.txt"), "w") as f:
        f.write("bee")
    with PathManager.open("file://" + str(d / "a.bin"), "wb") as f:
        f.write(b"\x01")
    with PathManager.open(str(d / "b.txt")) as f:
        assert f.read() == "bee"
    assert PathManager.ls(str(d)) == ["a.bin", "b.txt"]
    assert PathManager.exists(str(d / "a.bin")) and PathManager.isfile(str(d / "a.bin"))
    assert PathManager.isdir(str(d)) and not PathManager.isfile(str(d))
    assert not PathManager.exists(str(d / "c"))


def test_ls_of_empty_directory_is_empty(tmp_path):
    assert PathManager.ls(str(tmp_path)) == []


def test_rm_removes_files_only(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    PathManager.rm(str(f))
    assert not f.exists()
    with pytest.raises(FileNotFoundError):
        PathManager.rm(str(f))
    with pytest.raises(IsADirectoryError, match="is a directory"):
        PathManager.rm(str(tmp_path))


def test_copy_respects_overwrite(tmp_path):
    src, dst = tmp_path / "src.txt", tmp_path / "dst.txt"
    src.write_text("new")
    assert PathManager.copy(str(src), str(dst)) is True
    assert dst.read_text() == "new"
    dst.write_text("old")
    with pytest.raises(FileExistsError, match=r"dst\.txt' exists and overwrite=False"):
        PathManager.copy(str(src), str(dst))
    assert dst.read_text() == "old"
    PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_text() == "new"


def test_copy_from_url_to_local_file(server, cache_dir, tmp_path):
    dst = tmp_path / "copied.pkl"
    PathManager.copy(server.url("models/weights.pkl"), str(dst))
    assert dst.read_bytes() == b"\x00\x01weights\xff"


# ---------------------------------------------------------------- other fsspec protocols


def test_memory_filesystem_through_fsspec(tmp_path, cache_dir):
    base = f"memory://heron-test-{uuid.uuid4().hex[:8]}"
    PathManager.mkdirs(base + "/sub")
    with PathManager.open(base + "/sub/t.txt", "w") as f:
        f.write("text")
    with PathManager.open(base + "/sub/t.txt") as f:
        assert f.read() == "text"
    assert PathManager.exists(base + "/sub/t.txt")
    assert PathManager.isfile(base + "/sub/t.txt") and PathManager.isdir(base + "/sub")
    assert PathManager.ls(base + "/sub") == ["t.txt"]

    local = PathManager.get_local_path(base + "/sub/t.txt")
    assert Path(local).read_text() == "text"
    assert Path(local).is_relative_to(cache_dir)

    PathManager.copy(base + "/sub/t.txt", str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text() == "text"
    PathManager.rm(base + "/sub/t.txt")
    assert not PathManager.exists(base + "/sub/t.txt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        PathManager.rm(base + "/sub/t.txt")
