"""Checkpoint manager (last + best k, atomic), averaging, and channel selection."""

import json

import pytest
import torch

from mixitcli import build_model
from mixitcli.model import load_model
from mixitcli.stems import STEMS
from mixitcli.selection import (
    SelectionError,
    best_assignment,
    chunk_starts,
    read_selection,
    resolve,
    select_channels,
)
from mixitcli.model.checkpoints import average_checkpoints, best_checkpoints, load_checkpoint
from mixitcli.train.checkpoint import CheckpointManager, training_state


def make_state(model, step, epoch):
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return training_state(model=model, optimizer=opt, scheduler=sched, step=step, epoch=epoch, epoch_step=0, config={"stage": "pretrain"}, counters={})


def test_manager_keeps_last_and_best_k(tmp_path):
    model = build_model("tiny", n_outputs=2)
    manager = CheckpointManager(tmp_path, keep_best=2)
    losses = [5.0, 3.0, 4.0, 1.0, 6.0]
    for epoch, loss in enumerate(losses):
        manager.save(make_state(model, step=10 * epoch, epoch=epoch), valid_loss=loss)
    kept = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert [e["valid_loss"] for e in kept] == [1.0, 3.0]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("best-*.pt")) == [e["path"] for e in sorted(kept, key=lambda e: e["path"])]
    assert load_checkpoint(manager.last)["epoch"] == 4
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))  # no temporary files left


def test_average_of_checkpoints_is_the_mean_of_weights(tmp_path):
    manager = CheckpointManager(tmp_path, keep_best=3)
    models = []
    for epoch in range(3):
        torch.manual_seed(epoch)
        models.append(build_model("tiny", n_outputs=2))
        manager.save(make_state(models[-1], step=epoch, epoch=epoch), valid_loss=float(epoch))
    averaged = average_checkpoints(best_checkpoints(tmp_path))
    for name, value in averaged.state_dict().items():
        expected = sum(m.state_dict()[name] for m in models) / 3
        assert torch.allclose(value, expected, atol=1e-6), name
    assert torch.equal(load_model(tmp_path).decoder.heads[0].fc3.weight, averaged.decoder.heads[0].fc3.weight)


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
