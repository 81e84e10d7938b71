"""Channel selection with odd validation songs (issue 10, items 6 and 7), through the real CLI:
a stem silent in every validation song is warned about, recorded, chosen by a stated rule and
warned about again by finetune; no validation songs at all is said plainly, with the fix."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mixitcli.cli import app
from mixitcli.data.musdb import VALIDATION_TRACKS
from mixitcli.model import build_model, model_to_dict
from mixitcli.selection import resolve
from tests.data.conftest import noise, write

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


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


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A prepared MUSDB folder whose two 1 s validation songs have silent vocals, and a random
    tiny 6-output model (the counts do not matter here, only which stems get any; small: fast)."""
    tmp = tmp_path_factory.mktemp("sel")
    root = tmp / "musdb"
    songs = {"Own - Train": ("train", 8.5), VALIDATION_TRACKS[0]: ("train", 1.0), VALIDATION_TRACKS[1]: ("train", 1.0), "Own - Test": ("test", 1.0)}
    for k, (name, (split, seconds)) in enumerate(songs.items()):
        stems = {s: noise(seconds, amp=0.05, seed=10 * k + j) for j, s in enumerate(("vocals", "drums", "bass", "other"))}
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
    args = ["select-channels", str(setup["model"]), "--musdb", str(setup["prep"]), "--out", str(out), "--device", "cpu", "--chunk-seconds", "0.5"]
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
    fine = runner.invoke(app, ["finetune", "--data", str(setup["prep"]), "--out", str(setup["tmp"] / "fine"), "--init", str(setup["model"]),
                               "--selection", str(out), "--segment-seconds", "0.5", "--batch-size", "1", "--workers", "0", "--device", "cpu"])
    assert fine.exit_code == 130, fine.output
    text = flat(fine.output)
    assert f"outputs {[chosen['by_stem'][s] for s in ('bass', 'drums', 'vocals', 'other')]} selected by {out}" in text
    assert f"warning: {out}: vocals is silent in every chunk of the validation songs" in text


def test_no_validation_songs_says_so_and_how_to_make_some(setup, tmp_path):
    import shutil

    prep = tmp_path / "prep"
    shutil.copytree(setup["prep"], prep)
    (prep / "valid.txt").write_text("")
    result = runner.invoke(app, ["select-channels", str(setup["model"]), "--musdb", str(prep), "--out", str(tmp_path / "s.json"), "--device", "cpu"])
    assert result.exit_code == 1
    text = flat(result.output)
    assert "there are no validation songs" in text and "too short or silent" not in text
    assert "mixit prepare-musdb ROOT --out DIR" in text and "--valid-tracks N" in text
    assert not (tmp_path / "s.json").exists()
