"""Small dependency-free helpers: PNG writing and colour maps."""
from .colormap import colorize_depth, colorize_edges, colorize_normals, colorize_segmentation, palette
from .png import read_png, read_png_header, write_png

__all__ = ["write_png", "read_png", "read_png_header", "palette", "colorize_segmentation", "colorize_depth",
           "colorize_normals", "colorize_edges"]
