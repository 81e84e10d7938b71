"""Published models through huggingface_hub, against a local server that speaks the hub's protocol."""

import os
import socket
from pathlib import Path

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
from tests.hubserver import HubServer

GOOD = registry.DEFAULT_MODEL
OTHER = "sup.musdb18hq.bslocoformer-small"


@pytest.fixture
def hub(official, tmp_path, monkeypatch):
    files, lfs = {}, set()
    for name in (GOOD, OTHER):
        model = registry.get(name)
        files[model.hub_path("checkpoints/model.pth")] = official.weights("tiny4").read_bytes()
        files[model.hub_path("merged_config.yaml")] = official.config("tiny4").read_bytes()
        lfs.add(model.hub_path("checkpoints/model.pth"))
    server = HubServer(registry.HUB_REPO, registry.HUB_REVISION, files, lfs=lfs)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.close()


def unreachable_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def weights_in_cache(name: str) -> Path:
    return registry.snapshot_folder(name) / "checkpoints" / "model.pth"


def test_registry_holds_the_published_models(monkeypatch):
    names = list(registry.MODELS)
    assert sum(n.startswith("sup.") for n in names) == 9
    assert sum(n.startswith("mixit.") for n in names) == 12
    assert registry.get(GOOD).row == "Table 1 M2; Table 3 FMA large"
    assert registry.get("mixit.fma-large.bslocoformer-medium.12outputs").outputs == 12
    assert "sup.musdb18hq.bslocoformer-medium.mixit-fma-full-pretrained" in names
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    url = registry.file_url(GOOD, "checkpoints/model.pth")
    assert (
        url
        == f"https://mirror.example/kohei0209/mixit_mss/resolve/20a286f28b4a4c9058b935544cb7934ecc132443/models/sup/{GOOD}/checkpoints/model.pth"
    )
    monkeypatch.setenv("HF_HOME", "/somewhere/hf")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert registry.cache_dir() == Path("/somewhere/hf/hub")
    with pytest.raises(RegistryError, match="Published models"):
        registry.get("sup.musdb18hq.bslocoformer-huge")


def test_first_download_goes_into_the_hub_cache_and_loads(hub, official):
    folder = registry.fetch_model(GOOD, progress=False)
    expected = (
        Path(os.environ["HF_HOME"])
        / "hub"
        / "models--kohei0209--mixit_mss"
        / "snapshots"
        / registry.HUB_REVISION
        / "models"
        / "sup"
        / GOOD
    )
    assert folder == expected
    assert (folder / "checkpoints" / "model.pth").read_bytes() == official.weights("tiny4").read_bytes()
    # the cache names each blob by the hub's hash: SHA-256 for the LFS file, git SHA-1 for the small one
    assert Path(os.path.realpath(folder / "checkpoints" / "model.pth")).name == hub.sha256(
        registry.get(GOOD).hub_path("checkpoints/model.pth")
    )
    heads = [r for r in hub.requests if r.method == "HEAD"]
    gets = [r for r in hub.requests if r.method == "GET"]
    assert {r.path.rsplit("/", 1)[-1] for r in heads} == {"model.pth", "merged_config.yaml"}
    assert [r.path.startswith("/storage/") for r in gets].count(True) == 1  # the weights came from the storage host
    assert any(r.host.startswith("localhost") for r in gets)
    x = torch.randn(1, 2, 4096)
    reference = load_official(official.weights("tiny4"), official.config("tiny4"))
    with torch.no_grad():
        torch.testing.assert_close(load_model(folder)(x), reference(x))


def test_cached_model_is_used_with_no_request_and_offline(hub, monkeypatch):
    folder = registry.fetch_model(GOOD, progress=False)
    n = len(hub.requests)
    assert registry.resolve_model(GOOD, progress=False) == folder
    assert len(hub.requests) == n  # pinned revision and cached: not a single request
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", unreachable_url())
    assert registry.fetch_model(GOOD, progress=False) == folder
    assert registry.is_cached(GOOD) and not registry.is_cached(OTHER)


def test_offline_with_nothing_cached_says_how_to_get_the_files(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        registry.fetch_model(GOOD, progress=False)
    message = str(info.value)
    assert GOOD in message and "HF_HUB_OFFLINE is set" in message
    assert registry.download_command(GOOD) in message
    assert (
        f"hf download kohei0209/mixit_mss models/sup/{GOOD}/checkpoints/model.pth models/sup/{GOOD}/merged_config.yaml --revision {registry.HUB_REVISION}"
        in message
    )
    for file in registry.FILES:
        assert registry.file_url(GOOD, file) in message
    assert "--model" in message and str(registry.cache_dir()) in message
    assert hub.requests == []


def test_unreachable_hub_names_the_model_and_files(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", unreachable_url())
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda s: None)  # its 5 retries take 23 s
    with pytest.raises(DownloadError, match="cannot be reached") as info:
        registry.fetch_model(GOOD, progress=False)
    assert registry.download_command(GOOD) in str(info.value)
    assert not weights_in_cache(GOOD).exists()


def test_corrupted_body_is_rejected_and_removed(hub):
    hub.corrupt.add(registry.get(OTHER).hub_path("checkpoints/model.pth"))
    with pytest.raises(VerificationError, match="differs from the hub's") as info:
        registry.fetch_model(OTHER, progress=False)
    assert "removed" in str(info.value)
    assert not weights_in_cache(OTHER).exists()
    blobs = registry.cache_dir() / "models--kohei0209--mixit_mss" / "blobs"
    assert not (blobs / hub.sha256(registry.get(OTHER).hub_path("checkpoints/model.pth"))).exists()
    hub.corrupt.clear()  # the next try (the storage fixed) succeeds
    assert (registry.fetch_model(OTHER, progress=False) / "checkpoints" / "model.pth").is_file()


def test_unknown_revision_is_a_clear_error(hub, monkeypatch):
    monkeypatch.setattr(registry, "HUB_REVISION", "0" * 40)
    with pytest.raises(DownloadError, match=f"no revision {'0' * 40} of kohei0209/mixit_mss"):
        registry.fetch_model(GOOD, progress=False)


def test_interrupted_download_resumes_with_a_range_request(hub, official):
    hub.cut_once.add(registry.get(GOOD).hub_path("checkpoints/model.pth"))
    folder = registry.fetch_model(GOOD, progress=False)
    assert (folder / "checkpoints" / "model.pth").read_bytes() == official.weights("tiny4").read_bytes()
    ranges = [r.headers.get("range") for r in hub.requests if r.path.startswith("/storage/") and "range" in r.headers]
    size = official.weights("tiny4").stat().st_size
    assert ranges and 0 < int(ranges[0][len("bytes=") : -1]) < size  # it asked for the rest only


def test_token_goes_to_the_hub_and_not_to_the_storage_host(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    registry.fetch_model(GOOD, progress=False)
    heads = [r for r in hub.requests if r.method == "HEAD"]
    assert heads and all(r.headers.get("authorization") == "Bearer hf_secret_token" for r in heads)
    assert all("authorization" not in r.headers for r in hub.requests if r.path.startswith("/storage/"))


def test_models_command_lists_rows_sizes_and_the_cache(hub):
    runner = CliRunner()
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in registry.MODELS)
    assert "Table 1 M2" in result.output and "52.7 M" in result.output and "86.4 M" in result.output

    def cached_cell(output: str) -> str:
        line = next(line for line in output.splitlines() if f"{GOOD} (default)" in line)
        return [cell.strip() for cell in line.split("│") if cell.strip()][-1]

    assert cached_cell(result.output) == "no"
    registry.fetch_model(GOOD, progress=False)
    assert cached_cell(runner.invoke(app, ["models"]).output) == "yes"


def test_separate_with_the_default_model_for_a_new_user(hub, tmp_path):
    song = tmp_path / "song.wav"
    sf.write(song, (0.1 * np.random.default_rng(0).standard_normal((44100, 2))).astype(np.float32), 44100)
    result = CliRunner().invoke(app, ["separate", str(song), "--out", str(tmp_path / "stems"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "stems" / "song").iterdir()) == [
        "bass.wav",
        "drums.wav",
        "other.wav",
        "vocals.wav",
    ]
    assert registry.is_cached(registry.DEFAULT_MODEL)


def test_errors_print_urls_and_paths_unbroken(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros((4410, 2), np.float32), 44100)
    result = CliRunner().invoke(app, ["separate", str(song), "--out", str(tmp_path / "stems")])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    for file in registry.FILES:
        assert any(registry.file_url(GOOD, file) in line for line in lines)
    assert any(registry.download_command(GOOD) in line for line in lines)
    assert any(str(registry.cache_dir()) in line for line in lines)


def test_a_cache_that_cannot_be_written_is_not_an_unreachable_hub(hub, tmp_path, monkeypatch):
    """Issue 20: a read-only HF_HOME was reported as "the hub cannot be reached", with advice to
    copy the files into that folder. The message now names the cache and advice that works."""
    unwritable = Path("/sys/mixit-test-hf")  # sysfs: no folder can be made there, not even by root
    try:
        unwritable.mkdir()
        unwritable.rmdir()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    monkeypatch.setenv("HF_HOME", str(unwritable))
    song = tmp_path / "song.wav"
    sf.write(song, (0.1 * np.random.default_rng(0).standard_normal((44100, 2))).astype(np.float32), 44100)
    args = ["separate", str(song), "--out", str(tmp_path / "stems"), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert f"the Hugging Face cache {unwritable / 'hub'} cannot be written" in said and "cannot be reached" not in said
    assert "export HF_HUB_CACHE=" in said and f"{registry.download_command(GOOD)} --local-dir DIR" in said
    assert hub.requests == []  # nothing fetched that could not be kept
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline too: no advice to copy files into it
    offline = " ".join(CliRunner().invoke(app, args).output.split())
    assert (
        "into a writable folder, and point the cache at it" in offline and f"into {unwritable / 'hub'}" not in offline
    )
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # the advice
    assert registry.fetch_model(GOOD, progress=False).is_relative_to(tmp_path / "hf-cache")
