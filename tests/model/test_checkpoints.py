"""Checkpoint files (mixitcli/model/checkpoints.py): the average of the best checkpoints is the
mean of their weights; loading never executes code. Their checksums: tests/train/test_checkpoint.py."""

import pickle

import pytest
import torch

from mixitcli import build_model
from mixitcli.model import load_model
from mixitcli.model.checkpoints import CheckpointError, average_checkpoints, best_checkpoints, load_checkpoint
from mixitcli.train.checkpoint import CheckpointManager
from tests.builders import make_state


@pytest.mark.slow
def test_average_of_checkpoints_is_the_mean_of_weights(tmp_path):
    manager = CheckpointManager(tmp_path, keep_best=3)
    models = []
    for epoch in range(3):
        torch.manual_seed(epoch)
        models.append(build_model("tiny", n_outputs=2))
        manager.save(make_state(models[-1], step=epoch, epoch=epoch), valid_loss=float(epoch))
    averaged = average_checkpoints(best_checkpoints(tmp_path))
    states = [
        m.state_dict() for m in models
    ]  # once: a tiny model's state_dict() takes milliseconds, per name it took seconds
    for name, value in averaged.state_dict().items():
        expected = sum(state[name] for state in states) / 3
        assert torch.allclose(value, expected, atol=1e-6), name
    assert torch.equal(load_model(tmp_path).decoder.heads[0].fc3.weight, averaged.decoder.heads[0].fc3.weight)


def test_checkpoints_never_execute_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "mixit-train", "x": Evil()}))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
