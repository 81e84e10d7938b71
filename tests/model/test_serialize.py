"""Models as plain types and back (mixitcli/model/serialize.py, through load_model): a saved model
loads with the same outputs, a missing or foreign file is a clear error; weights that are not finite
are refused by every command that loads a model, naming the first bad tensor (issue 20: a NaN
weight "separated" into a full-scale DC stem), and weights that do not fit their saved
configuration are one line that names what differs and the likely cause (through
`finetune --init` in tests/train/test_loop.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.model import ModelLoadError, build_model, load_model, model_to_dict
from tests.builders import flat
from tests.official import WINDOWS

runner = CliRunner()


def test_a_non_finite_weight_is_refused_naming_it(tmp_path, official):
    model = model_to_dict(build_model("tiny", n_outputs=4))
    model["state_dict"]["separator.1.time.attn.qkv.weight"][3, 5] = float("nan")
    bad = tmp_path / "bad.pt"
    torch.save(model, bad)
    song = tmp_path / "song.wav"
    sf.write(song, 0.1 * np.random.default_rng(0).standard_normal((44100, 2)), 44100)
    result = runner.invoke(
        app, ["separate", str(song), "--model", str(bad), "--out", str(tmp_path / "out"), "--device", "cpu"]
    )
    said = flat(result.output)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert (
        f"{bad}: weight separator.1.time.attn.qkv.weight holds 1 non-finite value(s) (NaN or infinity) of 768" in said
    )
    assert not list((tmp_path / "out").rglob("*.wav"))

    folder = shutil.copytree(official.folder("tiny4"), tmp_path / "official")  # the authors' layout too
    weights = folder / "checkpoints" / "model.pth"
    state = torch.load(weights, weights_only=True)
    name = next(k for k in state if k not in WINDOWS)
    state[name] = torch.full_like(state[name], float("inf"))
    torch.save(state, weights)
    with pytest.raises(ModelLoadError, match=f"weight {name} holds {state[name].numel()} non-finite"):
        load_model(folder)


@pytest.mark.parametrize(
    "other, cause",
    [
        (
            dict(size="tiny", n_outputs=12),
            "the weights are of a model with 12 outputs, the configuration says 4 outputs: another number of outputs",
        ),
        (
            dict(size="small", n_outputs=4),
            "the weights are of a model with d_model 96, blocks 4, the configuration says d_model 16, blocks 2: another preset (small)",
        ),
    ],
)
def test_weights_that_do_not_fit_their_configuration_are_one_line(tmp_path, other, cause):
    model = model_to_dict(build_model("tiny", n_outputs=4))
    model["state_dict"] = model_to_dict(build_model(other["size"], n_outputs=other["n_outputs"]))["state_dict"]
    path = tmp_path / "mixed.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError) as caught:
        load_model(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(
        f"{path}: the weights do not fit the model configuration saved with them: "
    )
    assert f"Likely cause: {cause}" in message


def test_save_and_load_reproduces_outputs(tiny, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(model_to_dict(tiny), path)
    loaded = load_model(path)
    assert loaded.config == tiny.config and loaded.stems == tiny.stems
    wav = torch.randn(1, 2, 5000)
    with torch.no_grad():
        assert torch.equal(loaded(wav), tiny(wav))


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable checkpoint"):
        load_model(junk)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ModelLoadError, match="not a mixit checkpoint"):
        load_model(tmp_path / "other.pt")
