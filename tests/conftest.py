import os

import torch

# Triton runs CPU tensors only in its interpreter, and decides at import time: set it before mtl_ops loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
