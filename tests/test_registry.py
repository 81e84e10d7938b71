"""Published models: download from a local server laid out like the Hugging Face Hub, verify, cache."""

import hashlib
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from mixitcli import registry
from mixitcli.cli import app
from mixitcli.model import load_model
from mixitcli.model.official import load_official
from mixitcli.registry import DownloadError, RegistryError, VerificationError

GOOD = registry.DEFAULT_MODEL
CORRUPT = "sup.musdb18hq.bslocoformer-small"


class FakeHub:
    """Serves files under /<repo>/resolve/<revision>/<path> as the hub does: an LFS file answers
    with a 302 to a CDN URL and its SHA-256 in X-Linked-Etag; a small file answers directly
    with its git blob SHA-1 as ETag. ``corrupt`` files advertise the right hash but send other bytes."""

    def __init__(self, files: dict[str, bytes], lfs: set[str], corrupt: set[str]):
        self.files, self.lfs, self.corrupt = files, lfs, corrupt
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self, body: bool):
                hub.requests.append((self.command, self.path))
                prefix = f"/{registry.HUB_REPO}/resolve/{registry.HUB_REVISION}/"
                if self.path.startswith("/cdn/"):
                    data = hub.files.get(self.path[len("/cdn/") :])
                    if data is None:
                        return self.send_error(404)
                    if self.path[len("/cdn/") :] in hub.corrupt:
                        data = data[:-10] + b"corrupted!"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if body:
                        self.wfile.write(data)
                    return
                path = self.path[len(prefix) :] if self.path.startswith(prefix) else None
                if path not in hub.files:
                    return self.send_error(404)
                data = hub.files[path]
                if path in hub.lfs:
                    self.send_response(302)
                    self.send_header("Location", f"/cdn/{path}")
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("ETag", '"not-the-content-hash"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
                self.send_response(200)
                self.send_header("ETag", f'"{blob}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(official, tmp_path, monkeypatch):
    weights = (official.weights("tiny4")).read_bytes()
    config = (official.config("tiny4")).read_bytes()
    files, lfs = {}, set()
    for name in (GOOD, CORRUPT):
        model = registry.get(name)
        files[model.hub_path("checkpoints/model.pth")] = weights
        files[model.hub_path("merged_config.yaml")] = config
        lfs.add(model.hub_path("checkpoints/model.pth"))
    server = FakeHub(files, lfs, corrupt={registry.get(CORRUPT).hub_path("checkpoints/model.pth")})
    monkeypatch.setenv("MIXIT_HUB_URL", server.url)
    monkeypatch.setenv("MIXIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MIXIT_OFFLINE", raising=False)
    yield server
    server.close()


def unreachable_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_registry_holds_the_published_models():
    names = list(registry.MODELS)
    assert sum(n.startswith("sup.") for n in names) == 9
    assert sum(n.startswith("mixit.") for n in names) == 12
    assert registry.DEFAULT_MODEL in registry.MODELS
    assert "mixit.fma-large.bslocoformer-medium.12outputs" in names
    assert "sup.musdb18hq.bslocoformer-medium.mixit-fma-full-pretrained" in names
    url = registry.file_url(GOOD, "checkpoints/model.pth")
    assert url.endswith(f"/kohei0209/mixit_mss/resolve/20a286f28b4a4c9058b935544cb7934ecc132443/models/sup/{GOOD}/checkpoints/model.pth")
    with pytest.raises(RegistryError, match="Published models"):
        registry.get("sup.musdb18hq.bslocoformer-huge")


def test_download_verifies_and_caches(hub, official):
    folder = registry.fetch_model(GOOD, progress=False)
    assert folder == registry.model_folder(GOOD) and folder.is_relative_to(registry.cache_dir())
    assert (folder / "checkpoints/model.pth").read_bytes() == (official.weights("tiny4")).read_bytes()
    assert (folder / "checkpoints/model.pth.sha256").is_file() and (folder / "merged_config.yaml.sha256").is_file()
    assert {m for m, _ in hub.requests} == {"HEAD", "GET"}
    # The cached folder is an official model folder: it loads to the same model.
    x = torch.randn(1, 2, 4096)
    reference = load_official(official.weights("tiny4"), official.config("tiny4"))
    with torch.no_grad():
        torch.testing.assert_close(load_model(folder)(x), reference(x))
    # Verified files are never fetched again: no request at all.
    n = len(hub.requests)
    assert registry.resolve_model(GOOD, progress=False) == folder
    assert len(hub.requests) == n


def test_corrupted_download_is_rejected_and_not_kept(hub):
    with pytest.raises(VerificationError, match="differs from the hub's"):
        registry.fetch_model(CORRUPT, progress=False)
    weights = registry.model_folder(CORRUPT) / "checkpoints"
    assert not weights.exists() or not any(weights.iterdir())  # neither the file nor a partial one


def test_registry_hash_is_checked_too(hub, monkeypatch):
    entry = registry.RegistryModel(GOOD, "test", sha256={"checkpoints/model.pth": "0" * 64})
    monkeypatch.setitem(registry.MODELS, GOOD, entry)
    with pytest.raises(VerificationError, match="registry"):
        registry.fetch_model(GOOD, progress=False)


def test_offline_message_names_urls_and_destinations(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXIT_HUB_URL", unreachable_url())
    monkeypatch.setenv("MIXIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DownloadError) as info:
        registry.fetch_model(GOOD, progress=False)
    message = str(info.value)
    for file in registry.FILES:
        assert registry.file_url(GOOD, file) in message
        assert str(registry.model_folder(GOOD) / file) in message
    assert not (registry.model_folder(GOOD) / "checkpoints" / "model.pth").exists()


def test_files_placed_by_hand_are_used_offline(monkeypatch, tmp_path, official):
    monkeypatch.setenv("MIXIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MIXIT_HUB_URL", unreachable_url())
    folder = registry.model_folder(GOOD)
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(official.weights("tiny4"), folder / "checkpoints" / "model.pth")
    shutil.copy(official.config("tiny4"), folder / "merged_config.yaml")
    with pytest.warns(UserWarning, match="unverified"):
        assert registry.fetch_model(GOOD, progress=False) == folder


def test_hand_placed_files_are_verified_not_downloaded_online(hub, official):
    folder = registry.model_folder(GOOD)
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(official.weights("tiny4"), folder / "checkpoints" / "model.pth")
    shutil.copy(official.config("tiny4"), folder / "merged_config.yaml")
    registry.fetch_model(GOOD, progress=False)
    assert {m for m, _ in hub.requests} == {"HEAD"}
    assert (folder / "checkpoints" / "model.pth.sha256").is_file()


def test_separate_with_the_default_model_for_a_new_user(hub, tmp_path):
    song = tmp_path / "song.wav"
    sf.write(song, (0.1 * np.random.default_rng(0).standard_normal((44100, 2))).astype(np.float32), 44100)
    result = CliRunner().invoke(app, ["separate", str(song), "--out", str(tmp_path / "stems"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "stems" / "song").iterdir()) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert registry.model_folder(registry.DEFAULT_MODEL).is_dir()
