"""Channel selection (mixitcli/selection.py): chunks to the song's end, the best assignment, conflicts
resolved with distinct outputs, the matching outputs of a constructed model found, selection files
of both formats read.

Odd validation songs (issue 10, items 6 and 7), through the real CLI:
a stem silent in every validation song is warned about, recorded, chosen by a stated rule and
warned about again by finetune; no validation songs at all is said plainly, with the fix.
The assignment rule for k stems on constructed counts (issue 21), and malformed selection files
given to finetune (issue 20)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.data.musdb import VALIDATION_TRACKS
from mixitcli.model import build_model, model_to_dict
from mixitcli.selection import (
    SelectionError,
    best_assignment,
    chunk_starts,
    read_selection,
    resolve,
    select_channels,
    stem_report,
)
from mixitcli.stems import STEMS
from tests.builders import flat, noise, write

runner = CliRunner()


def test_chunking_ends_at_the_song_end():
    assert chunk_starts(25, 6) == [0, 6, 12, 18, 19]
    assert chunk_starts(24, 6) == [0, 6, 12, 18]
    assert chunk_starts(5, 6) == []


def test_best_assignment_is_the_optimum():
    snr = torch.tensor([[10.0, 9.0], [9.5, 0.0], [0.0, 0.0]])
    assert best_assignment(snr) == (1, 0)  # 9.5 + 9 beats 10 + 0


def test_conflicts_are_resolved_with_distinct_outputs():
    counts = torch.zeros(6, 4, dtype=torch.long)
    counts[2, 0], counts[2, 1], counts[3, 1], counts[4, 2], counts[5, 3] = 9, 8, 7, 5, 5
    chosen, notes = resolve(counts)
    assert chosen == [2, 3, 4, 5]
    assert "output 2 is the most frequent match of bass, drums" in notes[0]


class Oracle(torch.nn.Module):
    """A fake 6-output 'model' that puts stem j of the song in output PERM[j]."""

    PERM = [4, 0, 5, 2]

    def __init__(self, songs):
        super().__init__()
        self.songs = songs
        self.config = build_model("tiny", n_outputs=6).config

    def forward(self, mix):
        out = torch.zeros(mix.shape[0], 6, *mix.shape[1:])
        for b in range(mix.shape[0]):
            for _, mixture, stems in self.songs:
                for start in range(mixture.shape[-1] - mix.shape[-1] + 1):
                    if torch.equal(mixture[:, start : start + mix.shape[-1]], mix[b]):
                        for j, o in enumerate(self.PERM):
                            out[b, o] = stems[j, :, start : start + mix.shape[-1]]
                        break
        return out


def test_selection_finds_the_matching_outputs(tmp_path):
    torch.manual_seed(0)
    songs = []
    for name in ("a", "b"):
        stems = torch.randn(4, 2, 44100 // 10 * 3)
        stems[2, :, :4410] = 0  # vocals silent in the first chunk: inactive there
        songs.append((name, stems.sum(0), stems))
    selection = select_channels(Oracle(songs), songs, chunk_seconds=0.1, batch_size=2)
    assert selection.selected == Oracle.PERM
    assert selection.chunks == 6
    counts = torch.tensor(selection.counts)
    assert counts[5, 2] == 4 and counts[4, 0] == 6  # vocals voted only where active
    path = tmp_path / "sel.json"
    path.write_text(selection.to_json())
    assert read_selection(path, n_outputs=6) == Oracle.PERM


def test_read_selection_accepts_the_official_format_and_rejects_bad_files(tmp_path):
    official = tmp_path / "inst_head.json"
    official.write_text(json.dumps({"vocals": 1, "bass": 7, "drums": 3, "other": 0}))
    assert read_selection(official, n_outputs=12) == [7, 3, 1, 0]
    with pytest.raises(SelectionError, match="not distinct"):
        read_selection(official, n_outputs=4)
    missing = tmp_path / "m.json"
    missing.write_text(json.dumps({"vocals": 1}))
    with pytest.raises(SelectionError, match="bass, drums, other"):
        read_selection(missing, n_outputs=12)
    assert STEMS == ("bass", "drums", "vocals", "other")


# ----------------------------------------------------------------------------- k stems, odd validation songs, bad files


def test_a_stem_without_votes_gets_the_least_matched_unused_output():
    counts = torch.zeros(6, 4, dtype=torch.long)  # outputs x (bass, drums, vocals, other)
    counts[0, 0], counts[1, 0] = 5, 1  # bass -> 0; output 1 matched bass once
    counts[2, 1], counts[3, 1] = 4, 2  # drums -> 2; output 3 matched drums twice
    counts[4, 3], counts[5, 3] = 3, 3  # other -> 4 (tie: lowest index); output 5 matched other 3 times
    chosen, notes = resolve(counts)  # vocals: no vote at all
    assert chosen == [0, 2, 1, 4] and notes == []  # free outputs 1, 3, 5 have 1, 2, 3 votes: 1
    counts[:, 1] = 0  # drums without votes too: free outputs 1, 2, 3, 5 now have 1, 0, 0, 3 votes
    chosen, _ = resolve(counts)
    assert chosen == [0, 2, 3, 4]  # in stem order: drums -> 2, vocals -> 3 (fewest votes, then lowest index)


def test_the_outputs_chosen_maximise_the_total_count_not_each_stem_in_turn():
    """Outputs x stems. Stem 0's favourite is output 0 (10 votes), and so is stem 1's (10 votes, its
    only strong one): taking the stems in turn gives stem 0 output 0 and stem 1 output 1, a total
    of 11; the rule gives stem 0 output 1 and stem 1 output 0, a total of 19."""
    counts = torch.tensor([[10, 10, 0], [9, 1, 0], [0, 0, 4], [0, 0, 4]])
    chosen, notes = resolve(counts, ("guitar", "piano", "rest"))
    assert chosen == [1, 0, 2]  # rest: outputs 2 and 3 tie at 4 votes, the lowest index wins
    assert notes == [
        "output 0 is the most frequent match of guitar, piano",
        "resolved by choosing distinct outputs with the largest total count: guitar -> 1, piano -> 0, rest -> 2",
    ]
    ties = torch.tensor([[3, 3], [3, 3], [3, 3]])  # every assignment totals 6: the first stem takes the lowest output
    assert best_assignment(ties) == (0, 1) and resolve(ties)[0] == [0, 1]
    twelve = torch.eye(12, dtype=torch.long).flip(0) * 5 + 1  # 12 stems: stem j's output is 11 - j
    assert best_assignment(twelve) == tuple(range(11, -1, -1))
    assert stem_report(counts, chosen, ("guitar", "piano", "rest")) == [
        {
            "stem": "guitar",
            "active_chunks": 19,
            "output": 1,
            "share": round(9 / 19, 4),
            "runner_up": 0,
            "runner_up_share": round(10 / 19, 4),
        },
        {
            "stem": "piano",
            "active_chunks": 11,
            "output": 0,
            "share": round(10 / 11, 4),
            "runner_up": 1,
            "runner_up_share": round(1 / 11, 4),
        },
        {"stem": "rest", "active_chunks": 8, "output": 2, "share": 0.5, "runner_up": 3, "runner_up_share": 0.5},
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A prepared MUSDB folder whose two 1 s validation songs have silent vocals, and a random
    tiny 6-output model (the counts do not matter here, only which stems get any; small: fast)."""
    tmp = tmp_path_factory.mktemp("sel")
    root = tmp / "musdb"
    songs = {
        "Own - Train": ("train", 8.5),
        VALIDATION_TRACKS[0]: ("train", 1.0),
        VALIDATION_TRACKS[1]: ("train", 1.0),
        "Own - Test": ("test", 1.0),
    }
    for k, (name, (split, seconds)) in enumerate(songs.items()):
        stems = {
            s: noise(seconds, amp=0.05, seed=10 * k + j) for j, s in enumerate(("vocals", "drums", "bass", "other"))
        }
        if split == "train" and name != "Own - Train":
            stems["vocals"][:] = 0.0
        for s, x in stems.items():
            write(root / split / name / f"{s}.wav", x)
        write(root / split / name / "mixture.wav", sum(stems.values()))
    prep = tmp / "prep"
    result = runner.invoke(app, ["prepare-musdb", str(root), "--out", str(prep), "--workers", "0", "--no-progress"])
    assert result.exit_code == 0 and "1 train, 2 valid" in flat(result.output), result.output
    torch.manual_seed(0)
    model = tmp / "pre.pt"
    torch.save(model_to_dict(build_model("tiny", n_outputs=6)), model)
    return {"prep": prep, "model": model, "tmp": tmp}


def test_a_stem_silent_in_every_validation_song_is_warned_about_and_recorded(setup, monkeypatch):
    out = setup["tmp"] / "selection.json"
    args = [
        "select-channels",
        str(setup["model"]),
        "--musdb",
        str(setup["prep"]),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--chunk-seconds",
        "0.5",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    chosen = json.loads(out.read_text())
    counts = torch.tensor(chosen["counts"])
    assert counts[:, 2].sum() == 0 and (counts[:, [0, 1, 3]].sum(0) > 0).all()  # vocals never voted for
    vocals = chosen["by_stem"]["vocals"]
    others = [chosen["by_stem"][s] for s in ("bass", "drums", "other")]
    free = [o for o in range(6) if o not in others]
    assert vocals == min(free, key=lambda o: (counts[o].sum().item(), o))  # the stated rule
    assert chosen["unmatched"] == ["vocals"] and len(chosen["warnings"]) == 1
    text = flat(result.output)
    assert "warning: vocals is silent in every chunk of the validation songs, so no output matched it" in text
    assert f"output {vocals} was chosen as the unused output that matched the other stems least often" in text
    assert "validation songs in which vocals is active" in text and "--valid-tracks N" in text

    # finetune with that selection, stopped at its first step (Ctrl-C): the warning comes before any
    from mixitcli.train import loop

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_step", interrupt)
    fine = runner.invoke(
        app,
        [
            "finetune",
            "--data",
            str(setup["prep"]),
            "--out",
            str(setup["tmp"] / "fine"),
            "--init",
            str(setup["model"]),
            "--selection",
            str(out),
            "--segment-seconds",
            "0.5",
            "--batch-size",
            "1",
            "--workers",
            "0",
            "--device",
            "cpu",
        ],
    )
    assert fine.exit_code == 130, fine.output
    text = flat(fine.output)
    assert f"outputs {[chosen['by_stem'][s] for s in ('bass', 'drums', 'vocals', 'other')]} selected by {out}" in text
    assert f"warning: {out}: vocals is silent in every chunk of the validation songs" in text


def test_no_validation_songs_says_so_and_how_to_make_some(setup, tmp_path):
    import shutil

    prep = tmp_path / "prep"
    shutil.copytree(setup["prep"], prep)
    (prep / "valid.txt").write_text("")
    result = runner.invoke(
        app,
        [
            "select-channels",
            str(setup["model"]),
            "--musdb",
            str(prep),
            "--out",
            str(tmp_path / "s.json"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1
    text = flat(result.output)
    assert "there are no validation songs" in text and "too short or silent" not in text
    assert "mixit prepare-musdb ROOT --out DIR" in text and "--valid-tracks N" in text
    assert not (tmp_path / "s.json").exists()


def test_a_malformed_selection_is_one_clear_error(setup, tmp_path):
    """Issue 20: each of these gave finetune a traceback (or silently a wrong slice)."""
    cases = {
        "list": ([3, 1, 2, 0], "a selection is a JSON object"),
        "text": ("vocals", "a selection is a JSON object"),
        "no stems": ({"selected": [0, 1, 2, 3]}, 'no "stems" list of names beside "selected"'),
        "out of range": (
            {"stems": ["bass", "drums", "vocals", "other"], "selected": [0, 1, 2, 9]},
            "outputs [0, 1, 2, 9] are not distinct indices of a 6-output model: other -> 9 is not a whole number from 0 to 5",
        ),
        "repeated": ({"bass": 1, "drums": 1, "vocals": 2, "other": 3}, "output 1 is chosen for bass and drums"),
        "other stems": (
            {"stems": ["guitar", "rest"], "selected": [0, 1]},
            "no output chosen for bass, drums, vocals, other: it selects for guitar, rest",
        ),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        result = runner.invoke(
            app,
            [
                "finetune",
                "--data",
                str(setup["prep"]),
                "--out",
                str(tmp_path / "run"),
                "--init",
                str(setup["model"]),
                "--selection",
                str(path),
                "--workers",
                "0",
                "--device",
                "cpu",
            ],
        )
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (name, result.output)
        text = flat(result.output)
        assert expected in text and f"mixit select-channels PRETRAINED --data DIR --out {path}" in text, (name, text)
    assert not (tmp_path / "run" / "checkpoints").exists()
