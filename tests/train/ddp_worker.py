"""`python -m tests.train.ddp_worker ARGS`: `mixit ARGS` in which rank MIXIT_TEST_SIGNAL_RANK sends
itself SIGTERM at the start of its step MIXIT_TEST_SIGNAL_STEP. A test hook for the DDP test in
test_loop.py, which runs it under torchrun: one rank receives the signal, and every rank must
stop after the same step."""

import os
import signal

from mixitcli.cli import main
from mixitcli.train import loop

real_train_step, steps = loop.train_step, []


def train_step(*args, **kwargs):
    steps.append(1)
    if os.environ["RANK"] == os.environ["MIXIT_TEST_SIGNAL_RANK"] and len(steps) == int(
        os.environ["MIXIT_TEST_SIGNAL_STEP"]
    ):
        os.kill(os.getpid(), signal.SIGTERM)
    return real_train_step(*args, **kwargs)


loop.train_step = train_step
main()
