"""Stop signals (mixitcli/signals.py): deferred until asked, or raised where the program is;
one signal delivered twice is one; helper processes ignore them; the previous handlers come
back. The CLI's exit code of 128 + the signal's number is in tests/test_cli.py."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from mixitcli import signals
from mixitcli.signals import STOP_SIGNALS, Interrupted, deferred_stop, ignore_stop_signals, raise_on_stop, signal_name


def test_stop_signals_are_int_term_and_usr1():
    assert set(STOP_SIGNALS) == {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1}
    assert signal_name(signal.SIGTERM) == "SIGTERM" and signal_name(250) == "signal 250"
    assert Interrupted(signal.SIGTERM).exit_code == 143 and Interrupted(signal.SIGINT).exit_code == 130


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_deferred_stop_records_the_first_and_raises_on_the_second(signum):
    before = signal.getsignal(signum)
    with deferred_stop() as request:
        assert not request
        os.kill(os.getpid(), signum)
        assert request and request.signum == signum and request.name == signal_name(signum)
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C always counts
        assert caught.value.signum == signal.SIGINT
        assert request.signum == signum  # the first one stays the answer
    assert signal.getsignal(signum) is before


def test_a_repeated_sigterm_is_one_request_unless_it_comes_late(monkeypatch):
    """Slurm signals every process of a step and torchrun forwards what it got: one SIGTERM
    (or SIGUSR1) arrives twice within moments. A repeat after the window, or a second Ctrl-C, is a second signal."""
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        with deferred_stop() as request:
            os.kill(os.getpid(), signum)
            os.kill(os.getpid(), signum)  # no Interrupted
            assert request.signum == signum
    with pytest.raises(Interrupted), deferred_stop():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)  # another signal
    monkeypatch.setattr(signals, "DUPLICATE_WINDOW_S", 0.0)
    with pytest.raises(Interrupted), deferred_stop():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # later than the window


class _WorkerPid(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return os.getpid()


def test_dataloader_workers_ignore_stop_signals():
    """A terminal's Ctrl-C and Slurm's SIGTERM reach the DataLoader workers too; they must keep
    serving the loop, which decides when to stop (a dead worker breaks the last save)."""
    loader = torch.utils.data.DataLoader(_WorkerPid(), batch_size=1, num_workers=1, worker_init_fn=ignore_stop_signals)
    batches = iter(loader)
    worker = int(next(batches))
    for signum in STOP_SIGNALS:
        os.kill(worker, signum)
    assert [int(b) for b in batches] == [worker] * 3  # the same worker served the rest


def test_raise_on_stop_raises_where_the_program_is_and_restores():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught:
        with raise_on_stop():
            os.kill(os.getpid(), signal.SIGTERM)
            pytest.fail("the signal should have stopped the block")
    assert caught.value.signum == signal.SIGTERM and not isinstance(caught.value, Exception)
    assert signal.getsignal(signal.SIGTERM) is before
