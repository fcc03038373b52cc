"""`torchrun ... tests/train/stop_at.py STEP ARGS...`: the `adamba` command with every rank sending
itself SIGINT as step STEP ends (a Ctrl-C landing in that step, on a schedule a test can repeat)."""

import os
import signal
import sys

from adamba.cli import main
from adamba.train.trainer import Trainer

stop_at = int(sys.argv[1])
real = Trainer.train_step


def step_then_signal(self):
    row = real(self)
    if self.step == stop_at:
        os.kill(os.getpid(), signal.SIGINT)
    return row


Trainer.train_step = step_then_signal
main(sys.argv[2:])
