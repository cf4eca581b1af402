"""`import mtl_ops`, `mtl_ops.ops` and `mtl_ops.nn` need only torch and numpy; what needs an optional package
says which extra installs it. Each check runs in a fresh interpreter in which the optional packages are marked as
absent."""
import subprocess
import sys
import textwrap

import pytest

OPTIONAL = ("PIL", "matplotlib", "tqdm", "scipy", "skimage", "timm", "torchjd", "triton", "torchvision",
            "safetensors", "psutil")

# None in sys.modules is how Python marks a module as absent: `import X` raises ModuleNotFoundError and
# importlib.util.find_spec("X") returns None, as when X is not installed.
BLOCKER = textwrap.dedent(f"""
    import sys

    BLOCKED = {OPTIONAL!r}
    for name in BLOCKED:
        sys.modules[name] = None
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def test_the_blocker_blocks():
    out = _run("import PIL")
    assert out.returncode != 0 and "ModuleNotFoundError: import of PIL halted" in out.stderr


def test_core_imports_need_only_torch_and_numpy():
    out = _run("""
        import torch
        import mtl_ops
        import mtl_ops.ops
        import mtl_ops.nn
        from mtl_ops.ops import gated_residual
        x = torch.randn(2, 1, 3, 4, 4)
        y = gated_residual(x, x, torch.full((2, 2), 0.5))
        print("ok", tuple(y.shape))
    """)
    assert out.returncode == 0, out.stderr
    assert "ok (2, 1, 3, 4, 4)" in out.stdout


@pytest.mark.parametrize("code,match", [
    ("from mtl_ops.utils.images import read_image; read_image(sys.executable)",
     "reading images needs Pillow: pip install 'mtl_ops[train]'"),
    ("import numpy as np; from mtl_ops.utils.images import write_image; "
     "write_image('x.png', np.zeros((2, 2), np.uint8))", "writing images needs Pillow: pip install 'mtl_ops[train]'"),
    ("from mtl_ops.train.progress import Progress; Progress(3)",
     "the training progress bar needs tqdm: pip install 'mtl_ops[train]'"),
    ("from mtl_ops.models.backbones import TimmBackbone; TimmBackbone('resnet18')",
     "TimmBackbone needs timm: pip install 'mtl_ops[timm]'"),
    # the trainer imports without torchjd; an aggregator as weighting says which extra brings it
    ("import mtl_ops.train; from mtl_ops.train.aggregation import make_aggregator; make_aggregator('upgrad', {}, 2)",
     "weighting='upgrad' (a torchjd aggregator) needs torchjd: pip install 'mtl_ops[torchjd]'"),
    ("from mtl_ops.models import SharedNet; SharedNet({'depth': 1}, 'torchvision:resnet18')",
     "TorchvisionBackbone needs torchvision: pip install 'mtl_ops[torchvision]'"),
    ("open('w.safetensors', 'wb').close(); from mtl_ops.models import SharedNet; "
     "SharedNet({'depth': 1}, 'resnet10', pretrained='w.safetensors')",
     "reading .safetensors weights needs safetensors: pip install 'mtl_ops[train]'"),
])
def test_a_missing_optional_package_names_its_extra(code, match, tmp_path):
    out = subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode != 0
    assert match in out.stderr, out.stderr
