"""The fixed set of non-learnable primitive kinds of ETR-NLP, as the fused op ``routed_primitive_gather``
encodes them: one integer kind, two integer parameters and one frozen tensor per primitive. The Triton
kernels take the codes from here; csrc/common/rpg_primitives.h compiles the same codes (checked by
tests/test_constants.py through ``mtl_ops::_constant``).

Every primitive maps (C, H, W) to (C, H', W') with H' = (H - 1) // s + 1 at stride s, centred on input
pixel (i·s, j·s):

=============  ======  ===================  ================================================================
kind           code    params (a, b)         frozen tensor / definition
=============  ======  ===================  ================================================================
identity       0       (0, 0)               none: x[c, i·s, j·s]
avg_pool       1       (0, 0)               none: 3×3 box mean with zero padding, divisor 9 everywhere
                                            (``count_include_pad=True``: a fixed linear filter)
max_pool       2       (0, 0)               none: 3×3 max, padding ignored (``F.max_pool2d(x, 3, s, 1)``)
shift          3       (dh, dw)             none: x[c, i·s − dh, j·s − dw], zero outside
noise          4       (0, 0)               (C, Hn, Wn) fixed mask n: x[c, i·s, j·s] + n[c, i·s % Hn, j·s % Wn]
dw_conv        5       (dilation, 0)        (C, 1, 3, 3): depthwise 3×3, padding = dilation
dense_conv     6       (dilation, 0)        (C, C, 3, 3): dense 3×3, padding = dilation
=============  ======  ===================  ================================================================
"""
IDENTITY, AVG_POOL, MAX_POOL, SHIFT, NOISE, DW_CONV, DENSE_CONV = range(7)
KIND_NAMES = ("identity", "avg_pool", "max_pool", "shift", "noise", "dw_conv", "dense_conv")
LINEAR_KINDS = frozenset({IDENTITY, AVG_POOL, SHIFT, NOISE, DW_CONV, DENSE_CONV})  # all but max_pool
FROZEN_KINDS = (NOISE, DW_CONV, DENSE_CONV)  # the kinds that read their frozen tensor


def output_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1
