"""mtl_ops: fused kernels and drop-in modules for multi-task dense prediction."""
__version__ = "0.1.0"
