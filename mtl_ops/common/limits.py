"""Limits of the fused ops that the C++ kernels compile in (csrc/common/ms_attention_mix_args.h kMaxScales)."""

MAX_SCALES = 8  # ms_attention_mix: scales per call (the CUDA kernels are instantiated up to this many)
