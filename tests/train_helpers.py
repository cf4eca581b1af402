"""Tiny training settings shared by the trainer tests."""
import os
import tempfile

import pytest
import torch

from mtl_ops.train import TrainConfig

CACHE = os.path.join(tempfile.gettempdir(), "mtl_ops_test_cache")
TASKS = ("semseg", "depth", "normals", "edges", "attributes")


def tiny_config(**overrides) -> TrainConfig:
    base = dict(method="shared", tasks=TASKS, size=(32, 40), n_train=16, n_val=8, batch_size=8, epochs=1,
                width=8, cache_dir=CACHE, quiet=True, augment=False, lr=3e-3, num_threads=1)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine, two threads spin-wait each other and small training
    steps get ~30x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
