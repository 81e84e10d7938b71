"""`mixit export --onnx` and what it writes: the authors' tiny model as an ONNX graph, checked,
run by onnxruntime within 1e-4 of torch and of the authors' own outputs (compact official
fixtures), without torch, and by `mixit separate --backend onnxruntime`."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.model.official import load_official
from mixitcli.onnxrun import OnnxModel
from tests import official as rule
from tests.builders import REPO, css_reference

runner = CliRunner()
TOL = 1e-4
SR = 44100


@pytest.fixture(scope="session")
def exported(official, tmp_path_factory):
    """The official tiny 4-output model (its folder, as published) exported through the CLI (once
    per test process), the command's result, the model itself and the graph loaded with onnxruntime."""
    path = tmp_path_factory.mktemp("onnx") / "tiny4.onnx"
    result = runner.invoke(app, ["export", str(official.folder("tiny4")), "--onnx", str(path)])
    model = load_official(official.weights("tiny4"), official.config("tiny4"))
    return path, result, model, OnnxModel(path) if result.exit_code == 0 else None


def rel_errors(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per output of (b, n, c, t): ||out - ref|| / ||ref||."""
    diff = np.linalg.norm((out - ref).swapaxes(0, 1).reshape(ref.shape[1], -1), axis=1)
    return diff / np.linalg.norm(ref.swapaxes(0, 1).reshape(ref.shape[1], -1), axis=1)


def test_export_writes_a_checked_graph(exported):
    path, result, _, graph = exported
    assert result.exit_code == 0, result.output
    assert "checked: onnxruntime against torch" in result.output and str(path) in result.output
    assert path.is_file() and not list(path.parent.glob("*.partial"))
    assert graph.stems == ("bass", "drums", "vocals", "other") and graph.config.sample_rate == SR


def test_onnxruntime_equals_torch_and_the_authors_outputs(exported, official):
    """The compact official fixtures: their 0.53 s input, as a batch of two (dynamic batch and frames)."""
    _, _, model, graph = exported
    x = rule.mixture()  # (1, 2, 23284): 45 frames, the export's example had 16
    batch = torch.cat([x, 0.5 * x.flip(-1)])  # (2, 2, t)
    out = graph(batch.numpy())
    with torch.no_grad():
        ref = model(batch).numpy()
    assert out.shape == ref.shape == (2, 4, 2, 23284)
    assert rel_errors(out, ref).max() <= TOL
    assert rel_errors(out[:1], official.io["tiny4_wrapper_out"].numpy()).max() <= TOL  # the authors' own code's output


def test_the_graph_runs_without_torch(exported, tmp_path):
    """onnxruntime and numpy only: in a process where importing torch fails."""
    path, _, model, _ = exported
    x = rule.mixture().numpy()
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # `import torch` raises ImportError from here on
        import numpy as np
        from mixitcli.onnxrun import OnnxModel
        np.save({str(tmp_path / "y.npy")!r}, OnnxModel({str(path)!r})(np.load({str(tmp_path / "x.npy")!r})))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "mixitcli")))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().replace("'", '"')) == [
        "mixitcli",
        "mixitcli.onnxrun",
        "torch",
    ]  # torch: the None
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert rel_errors(np.load(tmp_path / "y.npy"), ref).max() <= TOL


def test_separate_with_the_onnxruntime_backend(exported, tmp_path):
    """A .onnx --model runs with onnxruntime (--backend auto), chunked as torch runs it."""
    path, _, model, _ = exported
    x = 0.1 * np.random.default_rng(0).standard_normal((2, int(1.1 * SR))).astype(np.float32)  # two chunks
    song = tmp_path / "song.wav"
    sf.write(song, x.T, SR, subtype="FLOAT")
    result = runner.invoke(
        app,
        [
            "separate",
            str(song),
            "-o",
            str(tmp_path / "out"),
            "-m",
            str(path),
            "--bits",
            "float",
            "--chunk",
            "1",
            "--hop",
            "0.5",
            "--filename",
            "{stem}.{ext}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "(cpu, float32, onnxruntime)" in result.output
    stems = np.stack([sf.read(tmp_path / "out" / f"{s}.wav", dtype="float32")[0].T for s in model.stems])
    with torch.no_grad():
        ref = css_reference(model, torch.from_numpy(x), SR, SR // 2).numpy()  # torch, float32, the same chunking
    assert rel_errors(stems[None], ref[None]).max() <= TOL


def test_backend_problems_are_listed_together(exported, tmp_path, monkeypatch):
    path, _, _, _ = exported
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros((SR // 2, 2), dtype=np.float32), SR)
    base = ["separate", str(song), "-o", str(tmp_path / "out")]
    result = runner.invoke(
        app, base + ["-m", "some-model.pt", "--backend", "onnxruntime", "--precision", "bf16", "--device", "cuda"]
    )
    assert result.exit_code == 1
    for problem in (
        "`mixit export some-model.pt --onnx model.onnx`",
        "--precision bf16 needs --backend torch",
        "runs on the CPU",
    ):
        assert problem in result.output, result.output
    result = runner.invoke(app, base + ["-m", str(path), "--backend", "torch"])
    assert result.exit_code == 1 and "run it with --backend onnxruntime" in result.output
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    result = runner.invoke(app, base + ["-m", str(path)])
    assert result.exit_code == 1 and "pip install 'mixit-mss[onnx]'" in result.output, result.output
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = runner.invoke(app, ["export", "any-model", "--onnx", str(tmp_path / "x.onnx")])  # said before any loading
    assert result.exit_code == 1 and "pip install 'mixit-mss[onnx]'" in result.output, result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.onnx").exists()
