import os

import torch

# Triton runs CPU tensors only in its interpreter, and decides at import time: set it before mtl_ops loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from harness import global_matmul_precision, matmul_precision_snapshot  # noqa: E402  (after TRITON_INTERPRET)


@pytest.fixture(autouse=True)
def _global_matmul_settings_restored():
    """A test that changes PyTorch's global fp32 matmul settings (TF32, float32 matmul precision, preferred BLAS)
    must restore them (harness.global_matmul_precision does): such a test fails here, and the settings are
    restored for the tests after it."""
    before = matmul_precision_snapshot()
    with global_matmul_precision():
        yield
        leaked = {k: (before[k], v) for k, v in matmul_precision_snapshot().items() if v != before[k]}
    if leaked:
        pytest.fail(f"the test changed PyTorch's global fp32 matmul settings without restoring them "
                    f"(setting: (before, after)): {leaked}")


def pytest_generate_tests(metafunc):
    """The op suite's parameters come from each op's test class (tests/op_suite.py)."""
    generate = getattr(metafunc.cls, "generate", None)
    if generate is not None:
        generate(metafunc)
