import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--bench-size", default="full", choices=("full", "quick"),
                     help="benchmark sizes: the stated sizes (full) or tiny ones (quick)")


@pytest.fixture
def bench_size(request):
    return request.config.getoption("--bench-size")
