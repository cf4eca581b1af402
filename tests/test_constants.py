"""The constants the C++ library is compiled with agree with the Python ones (mtl_ops.common), which the
reference and Triton code use: the scales of ms_attention_mix and the primitive codes of
routed_primitive_gather."""
import pytest
import torch

import mtl_ops
from mtl_ops.common import limits, primitive_kinds

pytestmark = pytest.mark.skipif(not mtl_ops.backends.LIBRARIES["cpp"].loaded, reason="compiled library not loaded")


def compiled(name: str) -> int:
    return torch.ops.mtl_ops._constant(name)


def test_max_scales():
    assert compiled("MAX_SCALES") == limits.MAX_SCALES


@pytest.mark.parametrize("name", [n.upper() for n in primitive_kinds.KIND_NAMES])
def test_primitive_codes(name):
    assert compiled(name) == getattr(primitive_kinds, name)


def test_no_primitive_kind_only_one_side_knows():
    assert compiled("NUM_KINDS") == len(primitive_kinds.KIND_NAMES)


def test_unknown_constant_says_so():
    with pytest.raises(ValueError, match=r"no constant named 'MAX_SCLAES'"):
        compiled("MAX_SCLAES")
