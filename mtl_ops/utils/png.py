"""A minimal PNG writer (stdlib ``zlib`` + ``struct``; no Pillow): 8-bit greyscale or RGB images."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Tuple, Union

import numpy as np

from .files import atomic_write

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
    atomic_write(path, lambda f: f.write(data))
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


def read_png(path: Union[str, Path]) -> np.ndarray:
    """Decode an 8-bit, non-interlaced greyscale / RGB / RGBA PNG to uint8 (H, W) or (H, W, 3|4)."""
    data = Path(path).read_bytes()
    if not data.startswith(_SIGNATURE):
        raise ValueError(f"{path}: not a PNG (bad signature)")
    pos, header, idat = len(_SIGNATURE), None, b""
    while pos + 8 <= len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    if header is None or not idat:
        raise ValueError(f"{path}: missing IHDR or IDAT")
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path}: only 8-bit non-interlaced greyscale/RGB/RGBA PNGs are supported")
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * channels)
    out = np.zeros((height, width * channels), np.int32)
    bpp = channels
    for y in range(height):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        prev = out[y - 1] if y else np.zeros(width * channels, np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 255
        elif f in (1, 3, 4):
            cur = np.zeros_like(line)
            for x in range(width * channels):
                a = cur[x - bpp] if x >= bpp else 0
                b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (line[x] + pred) & 255
        else:
            raise ValueError(f"{path}: bad PNG filter type {f}")
        out[y] = cur
    out = out.astype(np.uint8)
    return out.reshape(height, width) if channels == 1 else out.reshape(height, width, channels)
