"""A minimal PNG writer (stdlib ``zlib`` + ``struct``; no Pillow): 8-bit greyscale or RGB images."""
from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Tuple, Union

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of ``image``: uint8 (H, W) greyscale or (H, W, 3) RGB."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"write_png: image must be uint8, got dtype {array.dtype}")
    if array.ndim == 2:
        colour_type, channels = 0, 1
    elif array.ndim == 3 and array.shape[2] == 3:
        colour_type, channels = 2, 3
    else:
        raise ValueError(f"write_png: image must be (H, W) or (H, W, 3), got shape {array.shape}")
    height, width = array.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"write_png: image must be non-empty, got shape {array.shape}")
    rows = np.ascontiguousarray(array).reshape(height, width * channels)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def write_png(path: Union[str, Path], image: np.ndarray) -> Path:
    """Write ``image`` (uint8 (H, W) or (H, W, 3)) to ``path`` atomically; returns the path."""
    path = Path(path)
    data = encode_png(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_png_header(path: Union[str, Path]) -> Tuple[int, int, int]:
    """(width, height, channels) of a PNG written by :func:`write_png`, after checking every chunk's CRC
    and that the image data decompresses to the expected size. Raises ValueError on a malformed file."""
    data = Path(path).read_bytes()
    if not data.startswith(_SIGNATURE):
        raise ValueError(f"{path}: not a PNG (bad signature)")
    pos, chunks = len(_SIGNATURE), {}
    idat = b""
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError(f"{path}: truncated chunk header")
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: CRC mismatch in chunk {kind!r}")
        chunks.setdefault(kind, body)
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    if b"IHDR" not in chunks or b"IEND" not in chunks or not idat:
        raise ValueError(f"{path}: missing IHDR, IDAT or IEND")
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = {0: 1, 2: 3}.get(colour_type)
    if depth != 8 or channels is None:
        raise ValueError(f"{path}: unsupported bit depth {depth} / colour type {colour_type}")
    if len(zlib.decompress(idat)) != height * (1 + width * channels):
        raise ValueError(f"{path}: image data has the wrong size")
    return width, height, channels
