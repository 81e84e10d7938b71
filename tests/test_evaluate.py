"""`mixit eval` (mixitcli/evaluate.py): resumable results, separating with a model or scoring
estimates, missing ffmpeg, a damaged eval_config.json; stop signals, one writer per results
folder, estimates of another length, non-finite samples scored as 0 (issue 10). The scores
themselves are in tests/test_metrics.py, the summary and `mixit report` in tests/test_report.py."""

import json
import os
import signal
from pathlib import Path

import museval
import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from mixitcli import audio, evaluate
from mixitcli.cli import app
from mixitcli.evaluate import EvalError, ResultsFolder
from mixitcli.metrics import usdr
from mixitcli.model import model_to_dict
from mixitcli.model.official import load_official
from mixitcli.report import SUMMARY_JSON, SUMMARY_MD, TABLE_STEMS
from tests.builders import flat, float_wav, noise

runner = CliRunner()
SR = 44100
STEMS = ("vocals", "bass", "drums", "other")


def test_results_folder_resumes_and_refuses_another_evaluation(tmp_path):
    config = {"musdb": "/m", "subset": "test", "model": "x", "estimates": None}
    folder = ResultsFolder(tmp_path, config)
    record = {
        "track": "A",
        "seconds": 1.0,
        "csdr": {s: 1.0 for s in TABLE_STEMS},
        "usdr": {s: 2.0 for s in TABLE_STEMS},
        "usdr_mdx": {s: 2.0 for s in TABLE_STEMS},
        "flags": {},
    }
    folder.add(record)
    with open(tmp_path / evaluate.RECORDS, "a") as f:
        f.write('{"track": "B", "csdr": {')  # interrupted mid-line
    again = ResultsFolder(tmp_path, config)
    assert again.done() == {"A"}
    assert (tmp_path / evaluate.RECORDS_CSV).read_text().count("\n") == 2  # header + A
    with pytest.raises(EvalError, match="another evaluation"):
        ResultsFolder(tmp_path, dict(config, subset="valid"))


def fake_musdb(root: Path, names, seconds: float = 3.0) -> Path:
    rng = np.random.default_rng(3)
    for name in names:
        folder = root / "test" / name
        folder.mkdir(parents=True)
        stems = {s: (0.05 * rng.standard_normal((int(seconds * SR), 2))).astype(np.float32) for s in TABLE_STEMS}
        for s, x in stems.items():
            sf.write(folder / f"{s}.wav", x, SR, subtype="FLOAT")
        sf.write(folder / "mixture.wav", sum(stems.values()), SR, subtype="FLOAT")
    return root


def test_eval_estimates_resumes_without_rescoring(tmp_path, monkeypatch):
    musdb = fake_musdb(tmp_path / "musdb", ["A - One", "B - Two", "C - Three"])
    estimates = tmp_path / "est"
    for track in (musdb / "test").iterdir():
        for s in TABLE_STEMS:
            (estimates / track.name).mkdir(parents=True, exist_ok=True)
            x, _ = sf.read(track / f"{s}.wav")
            sf.write(estimates / track.name / f"{s}.flac", 0.5 * x, SR)
    scored = []

    def fake_score(name, references, estimates):  # museval is tested above; count the calls here
        scored.append(name)
        v = {s: float(len(scored)) for s in TABLE_STEMS}
        return {"track": name, "seconds": 3.0, "csdr": v, "usdr": v, "usdr_mdx": v, "flags": {}}

    monkeypatch.setattr(evaluate, "score_track", fake_score)
    out = estimates  # the default results folder with --estimates
    args = ["eval", "--musdb", str(musdb), "--estimates", str(estimates), "--workers", "0"]
    ResultsFolder(
        out, {"musdb": str(musdb.resolve()), "subset": "test", "model": None, "estimates": str(estimates)}
    ).add(fake_score("B - Two", {}, {}))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert scored == ["B - Two", "A - One", "C - Three"]  # B was done: only A and C scored now
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["tracks"] == 3 and summary["csdr"]["vocals"] == 2.0
    assert "| cSDR" in (out / SUMMARY_MD).read_text()
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and len(scored) == 3  # everything done: nothing scored again
    (estimates / "C - Three" / "bass.flac").unlink()
    result = runner.invoke(
        app,
        ["eval", "--musdb", str(musdb), "--estimates", str(estimates), "--out", str(tmp_path / "r2"), "--workers", "0"],
    )
    assert result.exit_code == 1 and "C - Three/bass" in result.output


@pytest.mark.slow
def test_eval_model_end_to_end(tmp_path, official):
    model = load_official(official.weights("tiny4"), official.config("tiny4"))
    torch.save(model_to_dict(model), tmp_path / "tiny.pt")
    musdb = fake_musdb(tmp_path / "musdb", ["A - One"], seconds=2.0)
    out = tmp_path / "res"
    result = runner.invoke(
        app,
        [
            "eval",
            "--musdb",
            str(musdb),
            "--model",
            str(tmp_path / "tiny.pt"),
            "--out",
            str(out),
            "--workers",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / evaluate.RECORDS).read_text())
    ests = np.stack([sf.read(out / "estimates" / "A - One" / f"{s}.wav", always_2d=True)[0].T for s in TABLE_STEMS])
    refs = np.stack([sf.read(musdb / "test" / "A - One" / f"{s}.wav", always_2d=True)[0].T for s in TABLE_STEMS])
    direct = museval.evaluate(refs.transpose(0, 2, 1), ests.transpose(0, 2, 1))[0]
    np.testing.assert_allclose([record["csdr"][s] for s in TABLE_STEMS], np.nanmedian(direct, axis=1), atol=1e-9)
    assert record["usdr"]["vocals"] == pytest.approx(usdr(refs[0], ests[0]))
    assert "Vocals" in result.output and "uSDR (paper" in result.output


def test_eval_says_clearly_that_ffmpeg_is_missing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mixitcli import audio
    from mixitcli.cli import app

    monkeypatch.setattr(audio, "have_ffmpeg", lambda: False)
    result = CliRunner().invoke(app, ["eval", "--estimates", str(tmp_path), "--musdb", str(tmp_path)])
    assert result.exit_code == 1
    assert "needs ffmpeg" in result.output and "apt-get install -y ffmpeg" in result.output


def test_damaged_eval_config_is_written_again_when_nothing_was_scored(tmp_path, monkeypatch):
    """Issue 11: killed while writing eval_config.json (now written atomically), an older run
    left it empty; the rerun writes it again instead of failing with a JSONDecodeError, unless
    results exist that it can no longer vouch for."""
    musdb = fake_musdb(tmp_path / "musdb", ["A - One"])
    estimates = tmp_path / "est"
    for s in evaluate.STEMS:
        (estimates / "A - One").mkdir(parents=True, exist_ok=True)
        sf.write(estimates / "A - One" / f"{s}.wav", sf.read(musdb / "test" / "A - One" / f"{s}.wav")[0], SR)
    v = {s: 1.0 for s in evaluate.STEMS}
    monkeypatch.setattr(
        evaluate,
        "score_track",
        lambda name, r, e: {"track": name, "seconds": 3.0, "csdr": v, "usdr": v, "usdr_mdx": v, "flags": {}},
    )
    out = tmp_path / "results"
    out.mkdir()
    (out / evaluate.CONFIG).write_text("")
    args = ["eval", "--musdb", str(musdb), "--estimates", str(estimates), "--out", str(out), "--workers", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / evaluate.CONFIG).read_text())["subset"] == "test"
    (out / evaluate.CONFIG).write_text('{"musdb": ')  # damaged, and results.jsonl holds a track
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "is damaged" in result.output and "JSONDecodeError" in result.output
    assert not isinstance(result.exception, json.JSONDecodeError)


# -- stop signals, one writer per results folder, estimates of another length (issue 20) ----------


def test_eval_stopped_by_sigint_keeps_nothing_partial_and_resumes(tmp_path, official, monkeypatch):
    """Ctrl-C while eval writes a track's estimates: exit 130, no partial stem and no lock
    left; the same command then separates and scores the track."""
    torch.save(model_to_dict(load_official(official.weights("tiny4"), official.config("tiny4"))), tmp_path / "tiny.pt")
    musdb = fake_musdb(tmp_path / "musdb", ["A - One"], seconds=1.0)
    out = tmp_path / "res"
    args = [
        "eval",
        "--musdb",
        str(musdb),
        "--model",
        str(tmp_path / "tiny.pt"),
        "--out",
        str(out),
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    real_write = audio.BlockWriter.write

    def write_then_ctrl_c(self, block):  # the stems' temporary files exist and hold data now
        real_write(self, block)
        assert list(self.path.parent.glob(".*.partial"))
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(audio.BlockWriter, "write", write_then_ctrl_c)
    result = runner.invoke(app, args)
    assert result.exit_code == 130, result.output
    said = " ".join(result.output.split())
    assert "stopped: interrupted by SIGINT" in said and "run the same command again" in said and "Traceback" not in said
    assert not [p.name for p in out.rglob("*") if p.name.startswith(".")]  # no partial stem, no lock
    monkeypatch.setattr(audio.BlockWriter, "write", real_write)
    v = {s: 1.0 for s in TABLE_STEMS}  # museval is tested above (and takes seconds per track)
    monkeypatch.setattr(
        evaluate,
        "score_track",
        lambda name, r, e: {"track": name, "seconds": 1.0, "csdr": v, "usdr": v, "usdr_mdx": v, "flags": {}},
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["track"] for line in (out / evaluate.RECORDS).read_text().splitlines()] == ["A - One"]
    assert all(sf.info(out / "estimates" / "A - One" / f"{s}.wav").frames == SR for s in TABLE_STEMS)


def test_eval_refuses_a_busy_folder_and_flags_estimates_of_another_length(tmp_path, monkeypatch):
    """Issue 20: a second eval on one --out crashed on a rename; estimates longer or shorter
    than the reference were cut or padded without a word."""
    from tests.builders import start_holders, stop

    scored = {}

    def metrics(refs, ests, stems):  # what the score is computed on (museval itself is tested above)
        scored.update(refs=refs, ests=ests)
        v = {s: 1.0 for s in stems}
        return {"csdr": v, "usdr": v, "usdr_mdx": v, "flags": {}}

    monkeypatch.setattr(evaluate, "score_arrays", metrics)

    musdb = fake_musdb(tmp_path / "musdb", ["A - One"], seconds=1.0)
    estimates = tmp_path / "est" / "A - One"
    estimates.mkdir(parents=True)
    for s in TABLE_STEMS:
        x, _ = sf.read(musdb / "test" / "A - One" / f"{s}.wav", always_2d=True)
        x = {"bass": np.pad(x, ((0, 100), (0, 0))), "vocals": x[:-200]}.get(s, x)  # 100 samples too long, 200 too short
        sf.write(estimates / f"{s}.wav", x, SR, subtype="FLOAT")
    out = tmp_path / "res"
    args = ["eval", "--musdb", str(musdb), "--estimates", str(tmp_path / "est"), "--out", str(out), "--workers", "0"]
    (holder,) = start_holders(out)  # another command writing into --out
    try:
        result = runner.invoke(app, args)
        said = " ".join(result.output.split())
        assert (
            result.exit_code == 1
            and f"{out} is being written by another command" in said
            and f"(process {holder.pid} on" in said
        )
        assert not (out / evaluate.CONFIG).exists()
    finally:
        stop([holder])
    result = runner.invoke(app, args)
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "A - One: estimates of another length than their references, scored on the reference's length" in said
    assert "bass: estimate 44200 samples, reference 44100: its last 100 cut" in said
    assert "vocals: estimate 43900 samples, reference 44100: padded with 200 zeros" in said
    record = json.loads((out / evaluate.RECORDS).read_text())
    assert record["length_mismatch"] == {
        "vocals": {"estimate_samples": 43900, "reference_samples": 44100},
        "bass": {"estimate_samples": 44200, "reference_samples": 44100},
    }
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert {(m["stem"], m["estimate_samples"]) for m in summary["length_mismatch"]} == {
        ("vocals", 43900),
        ("bass", 44200),
    }
    assert "2 estimate(s) of another length" in (out / SUMMARY_MD).read_text()
    assert "its last 100 cut" in (out / evaluate.RECORDS_CSV).read_text()
    bass, vocals = TABLE_STEMS.index("bass"), TABLE_STEMS.index("vocals")
    assert scored["ests"].shape == scored["refs"].shape == (4, 2, SR)  # scored on the reference's length
    np.testing.assert_allclose(scored["ests"][bass], scored["refs"][bass], atol=1e-7)  # the extra samples cut
    assert not scored["ests"][vocals][:, -200:].any()  # the missing ones zero


def test_eval_scores_nonfinite_input_as_zero_and_names_it(tmp_path):
    musdb = tmp_path / "musdb"
    folder = musdb / "test" / "A - One"
    # 1 s of vocals only (the other stems silent, so museval scores one stem in one window: fast)
    refs = {s: noise(1.0, seed=10, amp=0.05) * (s == "vocals") for s in STEMS}
    for s, r in refs.items():
        float_wav(folder / f"{s}.wav", r)
    float_wav(folder / "mixture.wav", sum(refs.values()))
    estimates = tmp_path / "est"
    for s, r in refs.items():
        e = r + noise(1.0, seed=20, amp=0.01) * (s == "vocals")
        if s == "vocals":
            e[[10, 20, 30], 1] = np.nan
        float_wav(estimates / "A - One" / f"{s}.wav", e)
    result = runner.invoke(app, ["eval", "--musdb", str(musdb), "--estimates", str(estimates), "--workers", "0"])
    assert result.exit_code == 0, result.output
    bad = estimates / "A - One" / "vocals.wav"
    assert f"warning: {bad}: 3 non-finite sample(s) (NaN or infinity) replaced by 0 before scoring" in flat(
        result.output
    )
    record = json.loads((estimates / "results.jsonl").read_text())
    assert record["nonfinite"] == {str(bad): 3}
    assert all(np.isfinite(record[m]["vocals"]) for m in ("csdr", "usdr", "usdr_mdx"))
    assert record["usdr"]["vocals"] == pytest.approx(
        20 * np.log10(5), abs=0.1
    )  # noise 5x below the reference: a real score
    summary = json.loads((estimates / "summary.json").read_text())
    assert summary["nonfinite"] == [{"track": "A - One", "file": str(bad), "samples": 3}]
