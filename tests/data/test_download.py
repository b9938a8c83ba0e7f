"""Downloading the LPC layers: served from a local HTTP server on 127.0.0.1, never the internet."""

import functools
import hashlib
import shutil
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import pytest

from dsvae.cli import main
from dsvae.data import lpc
from dsvae.errors import DsvaeError


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format, *args):  # noqa: A002 - keep test output clean
        pass

    def do_GET(self):  # noqa: N802
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def served(lpc_dir, tmp_path):
    """A copy of the needed layers served over HTTP; yields (base URL, served folder, requested paths)."""
    root = tmp_path / "upstream"
    for layer, value in lpc.NEEDED_LAYERS:
        (root / layer).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lpc_dir / layer / f"{value}.png", root / layer / f"{value}.png")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root, server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".png"))


def test_download_fetches_verifies_and_caches(served, tmp_path):
    url, _, requests = served
    cache = tmp_path / "cache"
    assert lpc.download_layers(cache_dir=cache, base_url=url, progress=False) == cache
    sums = lpc.embedded_checksums()
    for key in lpc.NEEDED_LAYERS:
        rel = lpc.layer_file(*key)
        assert _sha(cache / rel) == sums[rel]
    assert len(requests) == 25 and "/shoes/1.png" in requests
    assert _leftovers(cache) == []
    assert set(lpc.verify_layers(cache)) == set(lpc.NEEDED_LAYERS)

    # a second call fetches nothing; a damaged cached file is fetched again
    requests.clear()
    lpc.download_layers(cache_dir=cache, base_url=url, progress=False)
    assert requests == []
    (cache / "hair" / "2.png").write_bytes(b"damaged")
    lpc.download_layers(cache_dir=cache, base_url=url.rstrip("/"), progress=False)
    assert requests == ["/hair/2.png"]
    assert _sha(cache / "hair" / "2.png") == sums["hair/2.png"]


def test_corrupted_upstream_file(served, tmp_path):
    url, root, _ = served
    bad = root / "topwear" / "4.png"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(DsvaeError, match="SHA-256") as info:
        lpc.download_layers(cache_dir=cache, base_url=url, progress=False)
    assert "topwear/4.png" in str(info.value) and "\n" not in str(info.value)
    assert not (cache / "topwear" / "4.png").exists()
    assert _leftovers(cache) == []


def test_stale_cached_file_removed_when_download_fails(served, tmp_path):
    url, root, _ = served
    cache = tmp_path / "cache"
    (cache / "body").mkdir(parents=True)
    (cache / "body" / "0.png").write_bytes(b"stale")
    (root / "body" / "0.png").unlink()
    with pytest.raises(DsvaeError):
        lpc.download_layers(cache_dir=cache, base_url=url, progress=False)
    assert not (cache / "body" / "0.png").exists()


def test_missing_upstream_file_is_a_404(served, tmp_path):
    url, root, _ = served
    (root / "shoes" / "1.png").unlink()
    cache = tmp_path / "cache"
    with pytest.raises(DsvaeError, match="404") as info:
        lpc.download_layers(cache_dir=cache, base_url=url, progress=False)
    assert "shoes/1.png" in str(info.value) and "\n" not in str(info.value)
    assert not (cache / "shoes" / "1.png").exists()
    assert _leftovers(cache) == []


def test_unreachable_server(tmp_path):
    with socket.socket() as s:  # a local port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "cache"
    with pytest.raises(DsvaeError, match="cannot download http://127.0.0.1"):
        lpc.download_layers(cache_dir=cache, base_url=f"http://127.0.0.1:{port}", progress=False)
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_unusable_cache_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DsvaeError, match="cache folder"):
        lpc.download_layers(cache_dir=blocker / "cache", base_url="http://127.0.0.1:9", progress=False)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DSVAE_CACHE_DIR", str(tmp_path / "c"))
    assert lpc.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DSVAE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert lpc.default_cache_dir() == tmp_path / ".cache" / "dsvae" / "sprites-lpc"
    assert lpc.DEFAULT_BASE_URL == "https://raw.githubusercontent.com/YingzhenLi/Sprites/master"


def test_embedded_checksums_cover_every_needed_layer():
    sums = lpc.embedded_checksums()
    assert all(len(sums[lpc.layer_file(*key)]) == 64 for key in lpc.NEEDED_LAYERS)


def test_cli_download_then_build(served, tmp_path, capsys):
    url, _, _ = served
    out = tmp_path / "sprites.h5"
    cache = tmp_path / "cache"
    args = ["data", "build", "--source", "lpc", "--download", "--cache-dir", str(cache), "--out", str(out), "--quiet"]
    assert main(args + ["--base-url", url + "missing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dsvae: error: cannot download") and "404" in err[0]
    assert not out.exists()
    assert main(args + ["--base-url", url]) == 0
    with h5py.File(out, "r") as f:
        assert f["train/videos"].shape[0] == 9000 and f["test/videos"].shape[0] == 2664
        assert f.attrs["source"] == "lpc"
        assert f["train/videos"][0].max() > 0
    assert set(lpc.verify_layers(cache)) == set(lpc.NEEDED_LAYERS)
