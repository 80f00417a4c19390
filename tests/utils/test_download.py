"""Tests of heron/utils/download.py against a real HTTP server on 127.0.0.1 that serves a
generated checkpoint, honours Range requests and can cut a connection mid-file."""

from __future__ import annotations

import hashlib
import io
import socket

import pytest
import torch

from heron.utils import download as download_mod
from heron.utils.download import download, sha256_of
from tests.http_server import RangeServer


@pytest.fixture(scope="module")
def checkpoint() -> bytes:
    """A real checkpoint file's bytes (a small conv's state_dict), ~100 KB."""
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save({"model": torch.nn.Conv2d(16, 32, 7).state_dict()}, buf)
    return buf.getvalue()


@pytest.fixture
def server(checkpoint, monkeypatch):
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")
    srv = RangeServer({"model_final.pth": checkpoint})
    yield srv
    srv.close()


def test_downloads_and_verifies_a_checkpoint_that_torch_can_load(server, checkpoint, tmp_path):
    dst = str(tmp_path / "zoo" / "model_final.pth")
    sha = hashlib.sha256(checkpoint).hexdigest()
    assert download(server.url("model_final.pth"), dst, sha256=sha, size=len(checkpoint)) == dst
    assert sha256_of(dst) == sha
    assert torch.load(dst, weights_only=True)["model"]["weight"].shape == (32, 16, 7, 7)
    assert sorted(p.name for p in (tmp_path / "zoo").iterdir()) == ["model_final.pth"]
    # present and verified: no second request
    download(server.url("model_final.pth"), dst, sha256=sha)
    assert len(server.requests) == 1


def test_a_cut_connection_is_resumed_with_a_range_request(server, checkpoint, tmp_path):
    server.cut["model_final.pth"] = 40_000
    dst = str(tmp_path / "model_final.pth")
    download(server.url("model_final.pth"), dst, sha256=hashlib.sha256(checkpoint).hexdigest())
    with open(dst, "rb") as f:
        assert f.read() == checkpoint
    assert server.requests == [("model_final.pth", None), ("model_final.pth", "bytes=40000-")]


def test_a_later_call_resumes_the_partial_file(server, checkpoint, tmp_path):
    server.cut["model_final.pth"] = 25_000
    dst = str(tmp_path / "model_final.pth")
    with pytest.raises(OSError, match=r"connection lost after 25000 bytes|got 25000 bytes"):
        download(server.url("model_final.pth"), dst, retries=0)
    part = tmp_path / "model_final.pth.part"
    assert part.read_bytes() == checkpoint[:25_000]
    assert not (tmp_path / "model_final.pth").exists()
    download(server.url("model_final.pth"), dst)
    assert (tmp_path / "model_final.pth").read_bytes() == checkpoint
    assert not part.exists()
    assert server.requests[-1] == ("model_final.pth", "bytes=25000-")


def test_a_server_that_ignores_range_restarts_the_file(server, checkpoint, tmp_path):
    (tmp_path / "model_final.pth.part").write_bytes(b"stale bytes from elsewhere")
    server.no_range = True
    dst = str(tmp_path / "model_final.pth")
    download(server.url("model_final.pth"), dst, size=len(checkpoint))
    assert (tmp_path / "model_final.pth").read_bytes() == checkpoint


def test_checksum_mismatch_is_refused_and_nothing_is_kept(server, tmp_path):
    dst = str(tmp_path / "model_final.pth")
    with pytest.raises(ValueError, match=r"Checksum mismatch for .*model_final.pth: SHA-256"):
        download(server.url("model_final.pth"), dst, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_is_refused(server, checkpoint, tmp_path):
    with pytest.raises(ValueError, match=rf"has {len(checkpoint)} bytes, expected 12"):
        download(server.url("model_final.pth"), str(tmp_path / "m.pth"), size=12)


def test_a_wrong_existing_file_is_downloaded_again(server, checkpoint, tmp_path):
    dst = tmp_path / "model_final.pth"
    dst.write_bytes(b"not the checkpoint")
    download(server.url("model_final.pth"), str(dst), sha256=hashlib.sha256(checkpoint).hexdigest())
    assert dst.read_bytes() == checkpoint


def test_a_file_placed_by_hand_is_used_without_a_request(server, tmp_path):
    dst = tmp_path / "model_final.pth"
    dst.write_bytes(b"placed by hand")
    assert download(server.url("model_final.pth"), str(dst)) == str(dst)
    assert server.requests == []


def test_offline_error_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model_final.pth"
    dst = str(tmp_path / "model_final.pth")
    with pytest.raises(OSError) as info:
        download(url, dst)
    assert url in str(info.value) and f"place it at {dst}" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_404_is_file_not_found(server, tmp_path):
    with pytest.raises(FileNotFoundError, match="HTTP 404"):
        download(server.url("nope.pth"), str(tmp_path / "nope.pth"))


def test_progress_bar_counts_the_resumed_bytes(server, checkpoint, tmp_path, monkeypatch):
    bars = []

    class RecordingBar:
        def __init__(self, **kwargs):
            self.kwargs, self.n = kwargs, kwargs["initial"]
            bars.append(self)

        def update(self, n):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(download_mod, "tqdm", RecordingBar)
    server.cut["model_final.pth"] = 30_000
    download(server.url("model_final.pth"), str(tmp_path / "m.pth"))
    assert [(b.kwargs["initial"], b.kwargs["total"], b.n) for b in bars] == [
        (0, len(checkpoint), 30_000),
        (30_000, len(checkpoint), len(checkpoint)),
    ]
