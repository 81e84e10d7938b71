"""The one progress display: bar contents, final lines, weighted bars, disabled displays, and
the stages that use it (data preparation's runner and `mixit make-demo-data`)."""

from __future__ import annotations

import io
import re

from rich.console import Console
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.data.parallel import Task, run_parallel
from mixitcli.progress import Progress, clock

FINAL = r"\d+:\d\d:\d\d"  # H:MM:SS


def text_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=160, force_terminal=False, color_system=None), out


def shown(progress: Progress) -> str:
    """What the bars look like right now, rendered as plain text."""
    console, out = text_console()
    console.print(progress.live.get_renderable())
    return out.getvalue()


def test_bar_shows_label_count_info_and_eta_then_leaves_one_final_line():
    console, out = text_console()
    with Progress(console) as progress:
        bar = progress.bar("train", 4, unit="steps")
        bar.advance(2, info="loss 1.500")
        row = shown(progress)
        assert "train" in row and "50%" in row and "2/4 steps" in row and "loss 1.500" in row and "ETA" in row
        progress.print("epoch 1 step 2: loss/valid 1.200")
        bar.advance(2, info="loss 0.900")
        bar.finish()
        assert progress.live.tasks == []  # the bar is gone
    lines = out.getvalue().splitlines()
    assert lines[0] == "epoch 1 step 2: loss/valid 1.200"
    assert re.fullmatch(rf"train: 4/4 steps in {FINAL}; loss 0\.900", lines[1]), lines
    assert len(lines) == 2  # a console that is no terminal gets no bar drawings, only lines


def test_resumed_and_weighted_bars():
    console, out = text_console()
    progress = Progress(console).start()
    resumed = progress.bar("scored", 5, done=2, unit="tracks")
    resumed.advance()
    weighted = progress.bar("decoding", 3, unit="files", weight=100.0)  # three files of 10, 30 and 60 bytes
    weighted.advance(weight=10.0)
    weighted.advance(weight=30.0)
    task = progress.live.tasks[1]
    assert task.completed == 40.0 and task.total == 100.0  # bar and ETA follow the weights
    assert "2/3 files" in shown(progress) and "40%" in shown(progress)  # the count follows the files
    progress.stop()  # unfinished bars say how far they got
    assert re.search(rf"^scored: 3/5 tracks in {FINAL}$", out.getvalue(), re.M)
    assert re.search(rf"^decoding: 2/3 files in {FINAL}$", out.getvalue(), re.M)


def test_removed_bars_leave_no_line_and_disabled_displays_write_nothing():
    console, out = text_console()
    with Progress(console) as progress:
        progress.bar("song.wav", 10, unit="s").remove()
    assert out.getvalue() == ""
    with Progress(console, enabled=False) as progress:
        bar = progress.bar("train", 3)
        bar.advance(info="x")
        progress.print("hidden")
    assert out.getvalue() == "" and bar.done == 1  # still counts, shows nothing


def test_clock():
    assert clock(0) == "0:00:00" and clock(83.9) == "0:01:23" and clock(3 * 3600 + 5) == "3:00:05"


def test_the_stages_report_through_it(tmp_path, capsys):
    run_parallel(
        abs,
        [Task(key=str(x), args=(-x,)) for x in range(3)],
        workers=0,
        on_result=lambda t, r: None,
        on_crash=None,
        label="cutting",
    )
    assert re.search(rf"^cutting: 3/3 files in {FINAL}$", capsys.readouterr().err, re.M)  # stderr: stdout stays clean
    result = CliRunner().invoke(
        app,
        [
            "make-demo-data",
            str(tmp_path / "demo"),
            "--songs",
            "1",
            "--musdb-train",
            "1",
            "--musdb-test",
            "0",
            "--seconds",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert re.search(rf"^synthesising: 2/2 songs in {FINAL}$", result.output, re.M), result.output
