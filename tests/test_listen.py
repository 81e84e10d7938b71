"""`mixit listen`: excerpts, loudness, spectrograms, encoding, and the page checked in headless Chromium;
a full disk, stop signals and one writer per page folder.

The browser needs Debian's `chromium` and `chromium-driver` packages (apt), and selenium (pip, dev extra).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from mixitcli import evaluate, listen
from mixitcli.cli import app
from mixitcli.listen import PICTURE, encode, frequency_ticks, loudest_window, loudness, spectrogram_db
from mixitcli.lock import LOCK_NAME

runner = CliRunner()
SR = 44100
SECONDS = 2.0
TRACKS = ("A - One", "B - Two")


# -- audio analysis ----------------------------------------------------------------------------


def test_loudest_window_is_where_the_burst_is():
    rng = np.random.default_rng(0)
    x = 0.01 * rng.standard_normal((2, 10 * SR))
    x[:, 6 * SR : 7 * SR] *= 50  # a loud second from 6 s to 7 s
    start, stop = loudest_window(x, SR, 2.0)
    assert stop - start == 2 * SR and start <= 6 * SR and stop >= 7 * SR
    assert loudest_window(x, SR, 30.0) == (0, 10 * SR)  # shorter than the excerpt: the whole signal
    x[:, -SR:] *= 1000  # loudest at the very end: the window ends at the end, off the 0.5 s grid too
    assert loudest_window(x[:, : 10 * SR - 100], SR, 2.0) == (8 * SR - 100, 10 * SR - 100)


def test_loudness_of_a_known_sine_and_of_silence():
    t = np.arange(3 * SR) / SR
    sine = 0.5 * np.sin(2 * np.pi * 997 * t)
    # BS.1770: a 997 Hz sine at 0 dBFS in one channel reads -3.01 LUFS; in both, 0 LUFS; half amplitude -6.02 dB.
    assert loudness(np.stack([sine, sine]), SR) == pytest.approx(-6.02, abs=0.1)
    assert loudness(np.stack([sine, 0 * sine]), SR) == pytest.approx(-9.03, abs=0.1)
    assert loudness(np.zeros((2, 3 * SR)), SR) is None  # digital silence
    assert (
        loudness(1e-6 * np.random.default_rng(0).standard_normal((2, 3 * SR)), SR) == -np.inf
    )  # below the -70 LUFS gate


def test_spectrogram_picture_puts_a_tone_at_its_frequency():
    t = np.arange(2 * SR) / SR
    db = spectrogram_db(np.stack([np.sin(2 * np.pi * 1000 * t)] * 2), SR)
    assert db.shape == PICTURE
    row = int(np.argmax(db.mean(axis=1)))
    one_k = dict(frequency_ticks(SR))["1k"] / 100 * PICTURE[0]  # the page's 1 kHz tick, in rows
    assert abs(row - one_k) <= 2
    quiet = spectrogram_db(np.stack([0.1 * np.sin(2 * np.pi * 1000 * t)] * 2), SR)
    assert quiet.max() == pytest.approx(db.max() - 20, abs=0.1)  # dB re a fixed 1.0: one scale for a track


@pytest.mark.parametrize("codec", ["opus", "mp3"])
def test_encoded_audio_decodes_to_the_same_length_and_sound(tmp_path, codec):
    t = np.arange(int(1.5 * SR)) / SR
    x = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    path = tmp_path / ("a.webm" if codec == "opus" else "a.mp3")
    encode(x, SR, path, codec=codec)
    assert 2000 < path.stat().st_size < 60_000  # small: about 100-160 kb/s
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-ar", str(SR), "-"], capture_output=True, check=True
    ).stdout
    y = np.frombuffer(raw, dtype="<f4").reshape(-1, 2).T  # decoded by ffmpeg, as a browser would
    assert abs(y.shape[1] - x.shape[1]) < 0.06 * SR  # codec padding only
    lag = int(np.argmax(np.correlate(y[0, 4000:8000], x[0, 4000:6000], mode="valid")))  # encoder delay
    part = slice(4000 + lag, 40000 + lag)
    corr = [np.corrcoef(y[c, part], x[c, 4000:40000])[0, 1] for c in range(2)]
    assert min(corr) > 0.98, corr


# -- inputs ------------------------------------------------------------------------------------


def _signals(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * SR)) / SR
    mono = {
        "vocals": 0.2 * np.sin(2 * np.pi * (300 + 100 * seed) * t) * (t > 0.7),
        "bass": 0.3 * np.sin(2 * np.pi * 55 * t),
        "drums": 0.2 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 3 * t) > 0.6),
        "other": 0.05 * rng.standard_normal(t.size),
    }
    return {k: np.stack([v, 0.7 * v]).astype(np.float32) for k, v in mono.items()}  # (c, t)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A 2-track MUSDB tree, two `mixit eval` results of it (scores faked: museval is tested
    in test_evaluate.py), and a `mixit separate` folder of 12 MixIT outputs."""
    root = tmp_path_factory.mktemp("listen")
    musdb = root / "musdb"
    for n, name in enumerate(TRACKS):
        stems = _signals(n)
        folder = musdb / "test" / name
        folder.mkdir(parents=True)
        for s, x in stems.items():
            sf.write(folder / f"{s}.wav", x.T, SR, subtype="FLOAT")
        sf.write(folder / "mixture.wav", sum(stems.values()).T, SR, subtype="FLOAT")
        for est, gain in (("est-scratch", 0.5), ("est-mixit", 0.9)):
            (root / est / name).mkdir(parents=True)
            for s, x in stems.items():
                sf.write(root / est / name / f"{s}.wav", (gain * x if s != "vocals" or n == 0 else 0 * x).T, SR)
        sep = root / "separated" / name
        sep.mkdir(parents=True)
        for i in range(12):
            part = stems[evaluate.STEMS[i % 4]] * (1.0 if i < 4 else 0.01 * i)
            sf.write(sep / f"out{i}.wav", (0 * part if i == 11 else part).T, SR)

    scores = {"est-scratch": {"A - One": 3.0, "B - Two": 7.0}, "est-mixit": {"A - One": 9.0, "B - Two": 5.0}}

    def fake_score(name, references, estimates):
        value = scores[Path(estimates["vocals"]).parent.parent.name][name]
        per_stem = {s: value + k for k, s in enumerate(evaluate.STEMS)}
        return {
            "track": name,
            "seconds": SECONDS,
            "csdr": per_stem,
            "usdr": per_stem,
            "usdr_mdx": per_stem,
            "flags": {},
        }

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "score_track", fake_score)
        for est in scores:
            result = runner.invoke(
                app,
                [
                    "eval",
                    "--musdb",
                    str(musdb),
                    "--estimates",
                    str(root / est),
                    "--out",
                    str(root / f"eval-{est}"),
                    "--workers",
                    "0",
                ],
            )
            assert result.exit_code == 0, result.output
    selection = {
        "stems": ["bass", "drums", "vocals", "other"],
        "selected": [1, 2, 0, 3],
        "counts": [[0, 1, 7, 0], [9, 0, 0, 1], [0, 8, 0, 0], [0, 0, 1, 6]] + [[0, 0, 0, 0]] * 8,
        "chunks": 9,
    }
    (root / "selection.json").write_text(json.dumps(selection))
    return {
        "root": root,
        "musdb": musdb,
        "scratch": root / "eval-est-scratch",
        "mixit": root / "eval-est-mixit",
        "separated": root / "separated",
        "selection": root / "selection.json",
    }


# -- the page in a browser ---------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,2200",
)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through its driver (Debian: apt-get install chromium chromium-driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.fail(
            "the browser test needs Chromium and its driver: `sudo apt-get install -y chromium chromium-driver` (or `make install`)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="mixit-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_and_check(driver, index: Path) -> dict:
    """Open the page; assert no console errors, every audio file decodes and every picture loads."""
    driver.get(index.resolve().as_uri())
    deadline = time.monotonic() + 15
    state = {}
    while time.monotonic() < deadline:
        state = driver.execute_script(
            "return {audio: [...document.querySelectorAll('audio')].map(a => [a.querySelector('source').getAttribute('src'), a.readyState, a.error && a.error.code]),"
            " images: [...document.querySelectorAll('img')].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])}"
        )
        if all(r >= 1 or e for _, r, e in state["audio"]) and all(c for _, c, _ in state["images"]):
            break
        time.sleep(0.2)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert state["audio"] and all(r >= 1 for _, r, _ in state["audio"]), [a for a in state["audio"] if a[1] < 1]
    assert state["images"] and all(w > 0 for _, _, w in state["images"]), [i for i in state["images"] if i[2] <= 0]
    return state


def column(driver, table: str, col: int) -> list[str]:
    return driver.execute_script(
        f"return [...document.querySelectorAll('#{table} tbody tr')].map(r => r.cells[{col}].textContent.trim())"
    )


def test_two_evaluations_side_by_side_in_chromium(inputs, browser, tmp_path):
    from selenium.webdriver.common.by import By

    page = tmp_path / "page"
    result = runner.invoke(
        app,
        ["listen", f"scratch={inputs['scratch']}", f"mixit={inputs['mixit']}", "--out", str(page), "--seconds", "1.5"],
    )
    assert result.exit_code == 0, result.output
    state = open_and_check(browser, page / "index.html")
    # per track: mixture, 4 references, 4 stems of each evaluation
    assert len(state["audio"]) == len(TRACKS) * (1 + 4 + 4 + 4) and len(state["images"]) == len(state["audio"])
    assert all(src.endswith(".webm") for src, _, _ in state["audio"])
    assert browser.find_element(By.ID, "summary-table").text.count("\n") == 2  # header + 2 models
    assert column(browser, "scores-table", 0) == list(TRACKS)
    mixit_avg = 1 + 2 * 5 + 5 - 1  # track, scratch's 10 columns, then mixit's cSDR Vocals..Average
    heading = browser.find_element(By.CSS_SELECTOR, f'#scores-table th[data-col="{mixit_avg}"]')
    assert heading.text.startswith("cSDR Avg")
    heading.click()  # numbers: best first
    assert column(browser, "scores-table", 0) == ["A - One", "B - Two"] and column(
        browser, "scores-table", mixit_avg
    ) == ["10.50", "6.50"]
    scratch_vocals = browser.find_element(By.CSS_SELECTOR, '#scores-table th[data-col="1"]')
    scratch_vocals.click()
    assert column(browser, "scores-table", 0) == ["B - Two", "A - One"] and heading.get_attribute("aria-sort") is None
    scratch_vocals.click()  # again: the other way round
    assert (
        column(browser, "scores-table", 0) == ["A - One", "B - Two"]
        and scratch_vocals.get_attribute("aria-sort") == "ascending"
    )
    link = browser.find_element(By.LINK_TEXT, "B - Two")
    assert link.get_attribute("href").endswith("#t2-b-two")
    text = browser.find_element(By.ID, "t2-b-two").text
    assert "silent" in text and "LUFS" in text and "cSDR 7.00 dB" in text  # B's scratch vocals are all zeros
    assert re.search(r"\d\.\d–\d\.\d s of 2\.0 s", text)  # a 1.5 s excerpt
    browser.execute_script("document.querySelector('.scroll').scrollLeft = 0; window.scrollTo(0, 0)")
    shot = tmp_path / "listen.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("MIXIT_LISTEN_SCREENSHOT"):
        shutil.copy(shot, os.environ["MIXIT_LISTEN_SCREENSHOT"])


def test_separate_folder_with_12_outputs_and_selection_counts(inputs, browser, tmp_path):
    page = tmp_path / "page"
    result = runner.invoke(
        app,
        [
            "listen",
            str(inputs["separated"]),
            "--out",
            str(page),
            "--selection",
            str(inputs["selection"]),
            "--codec",
            "mp3",
        ],
    )
    assert result.exit_code == 0, result.output
    state = open_and_check(browser, page / "index.html")
    assert len(state["audio"]) == len(TRACKS) * (1 + 12) and all(src.endswith(".mp3") for src, _, _ in state["audio"])
    text = browser.find_element("id", "t1-a-one").text
    assert "sum of the stems of separated" in text  # no mixture file: the outputs' sum is played
    assert "selected for vocals" in text and "best match in chunks: bass 0, drums 1, vocals 7, other 0" in text
    assert "whole track, 2.0 s" in text  # shorter than --seconds 30
    rows = browser.execute_script("return [...document.querySelectorAll('#t1-a-one .stem')].map(t => t.textContent)")
    assert rows == ["mixture"] + [f"out{i}" for i in range(12)]  # natural order: out2 before out10
    assert text.count("silent") == 1  # out11 is all zeros


def test_one_evaluation_whole_tracks_and_a_moved_musdb(inputs, tmp_path):
    moved = tmp_path / "moved-musdb"
    shutil.copytree(inputs["musdb"], moved)
    config = json.loads((inputs["mixit"] / evaluate.CONFIG).read_text())
    eval_copy = tmp_path / "eval"
    shutil.copytree(inputs["mixit"], eval_copy)
    (eval_copy / evaluate.CONFIG).write_text(json.dumps(dict(config, musdb=str(tmp_path / "gone"))))
    records = (eval_copy / evaluate.RECORDS).read_text().splitlines()
    (eval_copy / evaluate.RECORDS).write_text(records[0] + "\n")  # one track is enough here
    page = tmp_path / "page"
    result = runner.invoke(app, ["listen", str(eval_copy), "--out", str(page), "--full"])
    assert result.exit_code == 1 and "give --musdb PATH" in " ".join(result.output.split())
    assert not page.exists()  # nothing written before the inputs are checked
    result = runner.invoke(
        app, ["listen", str(eval_copy), "--out", str(page), "--full", "--musdb", str(moved), "--title", "Mine"]
    )
    assert result.exit_code == 0, result.output
    html = (page / "index.html").read_text()
    assert "<title>Mine</title>" in html and "whole track, 2.0 s" in html and html.count("<audio") == 1 + 4 + 4
    again = runner.invoke(app, ["listen", str(eval_copy), "--out", str(page), "--seconds", "1", "--musdb", str(moved)])
    assert again.exit_code == 0, again.output  # a page of ours is replaced
    spans = re.findall(r"(\d\.\d)–(\d\.\d) s of 2\.0 s", (page / "index.html").read_text())
    assert len(spans) == 1 and all(float(b) - float(a) == pytest.approx(1.0) for a, b in spans)  # 1 s excerpts


# -- clear errors --------------------------------------------------------------------------------


def test_bad_inputs_are_all_reported_at_once_and_nothing_is_written(inputs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not audio")
    page = tmp_path / "page"
    result = runner.invoke(app, ["listen", str(empty), str(notes), str(tmp_path / "missing"), "--out", str(page)])
    out = " ".join(result.output.split())
    assert result.exit_code == 1
    assert f"{empty}: empty folder" in out and f"{tmp_path / 'missing'}: no such folder" in out
    assert "not a `mixit separate` output" in out and "nor a `mixit eval` results folder" in out
    assert not page.exists()

    ragged = tmp_path / "ragged" / "song"
    ragged.mkdir(parents=True)
    sf.write(ragged / "bass.wav", np.zeros((SR, 2)), SR)
    sf.write(ragged / "drums.wav", np.zeros((SR + 10, 2)), SR)
    result = runner.invoke(app, ["listen", str(ragged.parent), "--out", str(page)])
    out = " ".join(result.output.split())
    assert (
        result.exit_code == 1
        and "song: its stems have different lengths" in out
        and "44100 samples" in out
        and "44110 samples" in out
    )

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["listen", f"a={inputs['separated']}", f"a={inputs['scratch']}", "--out", str(busy)])
    out = " ".join(result.output.split())
    assert (
        result.exit_code == 1
        and "not a page written by `mixit listen`" in out
        and "label(s) a name more than one input" in out
    )
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]


def test_missing_ffmpeg_is_named_with_the_fix(inputs, tmp_path, monkeypatch):
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))  # no ffmpeg on PATH
    result = runner.invoke(app, ["listen", str(inputs["separated"]), "--out", str(tmp_path / "page")])
    out = " ".join(result.output.split())
    assert result.exit_code == 1 and "needs ffmpeg" in out and "apt-get install -y ffmpeg" in out
    assert not (tmp_path / "page").exists()


def test_selection_files_of_both_formats_and_a_bad_one(inputs, tmp_path):
    from mixitcli.listen import ListenError, read_selection_counts

    ours = read_selection_counts(inputs["selection"])
    assert ours["selected"] == {1: "bass", 2: "drums", 0: "vocals", 3: "other"} and ours["counts"][0]["vocals"] == 7
    official = tmp_path / "inst_head.json"
    official.write_text(json.dumps({"vocals": 5, "bass": 7, "drums": 1, "other": 0}))
    assert read_selection_counts(official) == {
        "selected": {5: "vocals", 7: "bass", 1: "drums", 0: "other"},
        "counts": {},
        "chunks": None,
    }
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ListenError, match="not a selection JSON"):
        read_selection_counts(bad)


# -- full disk, stop signals, one writer per page folder (issue 20) -------------------------------


def test_full_disk_signal_busy_folder_and_stale_lock(tmp_path, monkeypatch):
    """Issue 20: on a full disk `mixit listen` left 0-byte pictures and audio under their final
    names and refused the rerun (the folder was no page of its). Now: one message naming the
    disk and the fix, no file under a final name; a stop signal (SIGUSR1) leaves no partial
    file either; a folder another `mixit listen` writes is refused; a lock left by a killed one
    is taken over with a warning; the rerun writes the page."""
    from tests.builders import stale_lock, start_holders, stop

    song = tmp_path / "separated" / "song"
    song.mkdir(parents=True)
    for stem, x in list(_signals(0).items())[:2]:
        sf.write(song / f"{stem}.wav", x[:, : SR // 2].T, SR)
    out = tmp_path / "page"
    args = ["listen", str(song.parent), "--out", str(out), "--codec", "mp3"]

    # ffmpeg on a full disk: it creates its output file, then fails (what left the 0-byte files)
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor last; do :; done\n: > "$last"\necho "$last: No space left on device" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")  # ffprobe is still the real one
    result = runner.invoke(app, args)
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert f"no space left on the device of {out}" in said and "run the same command again" in said, said
    assert not [
        p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")
    ]  # no 0-byte file under a final name
    monkeypatch.undo()

    def encode_then_usr1(*a, **kw):  # one audio file is written, then the signal comes
        real_encode(*a, **kw)
        os.kill(os.getpid(), signal.SIGUSR1)

    real_encode = listen.encode
    monkeypatch.setattr(listen, "encode", encode_then_usr1)
    result = runner.invoke(app, args)
    assert result.exit_code == 128 + signal.SIGUSR1, result.output
    assert "stopped: interrupted by SIGUSR1" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in out.rglob("*")) == [listen.MARKER]  # known as an unfinished page of ours
    monkeypatch.undo()

    (holder,) = start_holders(out)
    try:
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and f"(process {holder.pid} on" in " ".join(result.output.split())
    finally:
        stop([holder])
    dead = stale_lock(out)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "took over the lock left by" in result.output and f"process {dead} on" in " ".join(result.output.split())
    assert (out / "index.html").is_file() and not (out / listen.MARKER).exists() and not (out / LOCK_NAME).exists()
    assert all(p.stat().st_size > 0 for p in out.rglob("*") if p.is_file())
