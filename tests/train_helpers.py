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


class NaNEvery(torch.nn.Module):
    """The ``shared`` network, except that every ``nan_every``-th forward pass in training mode gives NaN:
    for ``nan_task``'s prediction, or with ``nan_task="image"`` for the input (so every task, and the
    BatchNorm statistics of that forward pass)."""

    def __init__(self, tasks, backbone="resnet18", *, nan_every=3, nan_task="depth", **options):
        from mtl_ops.models import SharedNet

        super().__init__()
        self.shared = SharedNet(tasks, backbone, **options)
        self.nan_every, self.nan_task, self.calls = nan_every, nan_task, 0

    def forward(self, images):
        hit = False
        if self.training:
            self.calls += 1
            hit = self.calls % self.nan_every == 0
        if hit and self.nan_task == "image":
            images = images * float("nan")
        preds = self.shared(images)
        if hit and self.nan_task != "image":
            preds = {**preds, self.nan_task: preds[self.nan_task] * float("nan")}
        return preds


def register_nan_method() -> str:
    from mtl_ops.train import register_method

    register_method("nan_test", NaNEvery, overwrite=True)
    return "nan_test"
