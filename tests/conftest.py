import os
from pathlib import Path

# Busy-waiting OpenMP threads stall tiny ops badly on a shared 2-core machine; must be set
# before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict:
    """A tokenizer and train/val shards from a few stdlib modules (tests/helpers.py), per module."""
    from tests.helpers import make_tiny_data

    return make_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def elastic_run(tiny_data, tmp_path_factory) -> Path:
    """Two finished runs under one folder: `el` (Matryoshka widths, gate calibrated) and
    `dense` (a plain model, for the errors a dense checkpoint must give)."""
    from adamba.config import load_config
    from adamba.train import trainer
    from tests.helpers import elastic_overrides, tiny_overrides

    root = tmp_path_factory.mktemp("elastic_run")
    trainer.run(load_config("tiny-cpu", elastic_overrides(tiny_data, root / "el", steps=4)))
    trainer.run(load_config("tiny-cpu", tiny_overrides(tiny_data, root / "dense", steps=2)))
    return root
