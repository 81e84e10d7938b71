"""Non-finite samples (NaN, infinity) in the input (issue 10, item 3): read as 0 once, in
mixitcli.audio.read_blocks, with a warning naming the file and the count, in `mixit separate`,
`mixit eval` and `mixit prepare-fma` (where a clip that held one is dropped and counted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from mixitcli import audio
from mixitcli.cli import app
from mixitcli.model import build_model, model_to_dict

runner = CliRunner()
SR = 44100
STEMS = ("vocals", "bass", "drums", "other")


def flat(text: str) -> str:
    return " ".join(text.split())


def float_wav(path: Path, x: np.ndarray) -> Path:
    """Write (t, c) float32 audio as a float WAV, which can hold NaN and infinity."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, SR, subtype="FLOAT")
    return path


def noise(seconds: float, seed: int, amp: float = 0.1) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal((int(seconds * SR), 2))).astype(np.float32)


def test_read_blocks_zeroes_and_reports_nonfinite_samples(tmp_path):
    x = noise(1.0, seed=1)
    x[100, 0], x[5000, 1], x[5001, 1] = np.nan, np.inf, -np.inf
    path = float_wav(tmp_path / "a.wav", x)
    seen = []
    blocks = list(audio.read_blocks(path, 4096, on_nonfinite=lambda first, bad: seen.append((first, np.argwhere(bad).tolist()))))
    got = np.concatenate(blocks, axis=1)  # (c, t)
    assert np.isfinite(got).all() and got[0, 100] == 0 and got[1, 5000] == got[1, 5001] == 0
    expected = x.T.copy()
    expected[~np.isfinite(expected)] = 0
    np.testing.assert_array_equal(got, expected)  # everything else untouched
    assert seen == [(0, [[0, 100]]), (4096, [[1, 904], [1, 905]])]  # block start, (channel, index in block)
    count = audio.NonFiniteCount()
    whole, _ = audio.read(path, on_nonfinite=count)
    np.testing.assert_array_equal(whole, expected)
    assert count.samples == 3 and audio.nonfinite_message(path, 3) == f"{path}: 3 non-finite sample(s) (NaN or infinity) replaced by 0"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(model_to_dict(build_model("tiny", n_outputs=4)), path)
    return path


def test_separate_warns_and_separates_the_rest(tmp_path, tiny_checkpoint):
    x = noise(1.0, seed=2)
    x[SR // 2, 0] = np.nan
    song = float_wav(tmp_path / "song.wav", x)
    clean = float_wav(tmp_path / "clean" / "song.wav", np.where(np.isfinite(x), x, 0).astype(np.float32))
    args = ["-m", str(tiny_checkpoint), "--device", "cpu", "--bits", "float"]
    result = runner.invoke(app, ["separate", str(song), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 0, result.output
    assert f"warning: {song}: 1 non-finite sample(s) (NaN or infinity) replaced by 0" in flat(result.output)
    assert "1 with non-finite samples replaced by 0" in flat(result.output)
    assert runner.invoke(app, ["separate", str(clean), "--out", str(tmp_path / "ref"), *args]).exit_code == 0
    for stem in STEMS:
        y, _ = sf.read(tmp_path / "out" / "song" / f"{stem}.wav")
        ref, _ = sf.read(tmp_path / "ref" / "song" / f"{stem}.wav")
        assert np.isfinite(y).all() and np.abs(y).max() > 1e-4, stem  # never silently emptied
        np.testing.assert_array_equal(y, ref)  # exactly the song with the NaN read as 0


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
    assert f"warning: {bad}: 3 non-finite sample(s) (NaN or infinity) replaced by 0 before scoring" in flat(result.output)
    record = json.loads((estimates / "results.jsonl").read_text())
    assert record["nonfinite"] == {str(bad): 3}
    assert all(np.isfinite(record[m]["vocals"]) for m in ("csdr", "usdr", "usdr_mdx"))
    assert record["usdr"]["vocals"] == pytest.approx(20 * np.log10(5), abs=0.1)  # noise 5x below the reference: a real score
    summary = json.loads((estimates / "summary.json").read_text())
    assert summary["nonfinite"] == [{"track": "A - One", "file": str(bad), "samples": 3}]


def test_prepare_fma_drops_and_counts_clips_with_nonfinite_samples(tmp_path):
    src = tmp_path / "music"
    x = noise(25.0, seed=3)
    x[12 * SR, 1] = np.nan  # inside the clips at 5 and 10 s
    float_wav(src / "one_nan.wav", x)
    y = noise(12.0, seed=4)
    y[::SR] = np.inf  # every clip of this file holds some
    float_wav(src / "all_bad.wav", y)
    float_wav(src / "clean.wav", noise(11.0, seed=5))
    out = tmp_path / "prep"
    result = runner.invoke(app, ["prepare-fma", "--audio-dir", str(src), "--out", str(out), "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["segments_dropped"] == {"silent": 0, "nonfinite": 2} and summary["files_with_nonfinite"] == 2
    assert summary["files_rejected"] == {"nonfinite": 1}
    text = flat(result.output)
    assert "2 dropped for non-finite samples (NaN or infinity; 2 file(s) held some)" in text and "rejected: nonfinite 1" in text
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["offset"] for r in rows if r["track"] == "one_nan") == [0, 15 * SR]
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(Path(r["file"]).name, r["reason"]) for r in rejected] == [("all_bad.wav", "nonfinite")]
    from mixitcli.data.manifest import SegmentIndex

    index = SegmentIndex.load(out)
    for k in range(len(index.length)):  # nothing non-finite, nothing replaced, reaches training
        clip = index.read(k, 0, int(index.length[k]))
        assert np.isfinite(clip).all()
    first = [k for k, r in enumerate(rows) if r["track"] == "one_nan" and r["offset"] == 0][0]
    np.testing.assert_allclose(index.read(first, 0, 10 * SR), x[: 10 * SR].T, atol=1 / 32768)  # the clean clip as it was
