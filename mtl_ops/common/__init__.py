"""Definitions shared by the reference ops, the Triton kernels and the op layer (and, where noted, the C++
kernels): the floating dtypes and accumulation rule, the task-major layout rule, the primitive codes of
routed_primitive_gather, the op limits, the import of an optional dependency and a convolution
that avoids a PyTorch CPU bug. Nothing here imports another part of mtl_ops.

The C++ library compiles its own copy of the constants (csrc/common); ``mtl_ops::_constant`` reports the
compiled values and tests/test_constants.py checks them against these."""
