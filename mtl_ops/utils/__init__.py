"""Helpers: colour maps and image files (Pillow, imported on use)."""
from .colormap import colorize_depth, colorize_edges, colorize_normals, colorize_segmentation, palette
from .images import read_image, to_unit_rgb, write_image

__all__ = ["read_image", "write_image", "to_unit_rgb", "palette", "colorize_segmentation", "colorize_depth",
           "colorize_normals", "colorize_edges"]
