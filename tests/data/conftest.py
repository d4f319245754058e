"""Real image files for the data tests: good ones, and every bad case of issue 3.

Files are written to ``tmp_path`` with PIL, or byte by byte where PIL cannot write
the case (16-bit RGB PNG, a decompression-bomb header). Nothing is mocked.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, array: np.ndarray) -> None:
    """Write an 8- or 16-bit grey (H, W) or RGB (H, W, 3) PNG without PIL."""
    bit_depth = 16 if array.dtype == np.uint16 else 8
    colour_type = 2 if array.ndim == 3 else 0
    height, width = array.shape[:2]
    big_endian = array.astype(">u2" if bit_depth == 16 else np.uint8)
    raw = b"".join(b"\x00" + big_endian[row].tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
    data += png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")
    path.write_bytes(data)


def write_png_bomb(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` grey pixels: a few hundred bytes
    on disk that would need width*height bytes of memory to decode."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
    data += png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    path.write_bytes(data)


def jpeg_bytes(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def noise_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@dataclass
class BadFolder:
    root: Path
    good: list[str]  # ids that must load
    bad: dict[str, str]  # id -> word that must appear in the skip reason


@pytest.fixture
def bad_folder(tmp_path: Path) -> BadFolder:
    """A folder holding each bad case of issue 3, next to ordinary images."""
    root = tmp_path / "images"
    root.mkdir()
    good: list[str] = []
    bad: dict[str, str] = {}

    photo = noise_rgb(60, 80)
    (root / "good.jpg").write_bytes(jpeg_bytes(photo, quality=95))
    Image.fromarray(photo).save(root / "upper.JPEG")
    good += ["good.jpg", "upper.JPEG"]

    # decoded correctly (conversions checked in test_decode.py)
    Image.fromarray(np.full((30, 40), 77, np.uint8), "L").save(root / "gray.png")
    Image.new("RGB", (32, 24), (200, 100, 50)).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    Image.new("RGB", (32, 24), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        root / "palette.png"
    )
    write_png(root / "gray16.png", np.full((20, 30), 32896, np.uint16))
    write_png(root / "rgb16.png", np.full((20, 30, 3), 257 * 40, np.uint16))
    Image.new("RGBA", (32, 24), (255, 0, 0, 0)).save(root / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (255, 0, 0)).save(root / "rotated.jpg", exif=exif)
    Image.new("RGB", (3, 2), (0, 0, 255)).save(root / "tiny.png")
    Image.new("RGB", (1, 400), (0, 255, 0)).save(root / "strip.png")
    good += ["gray.png", "cmyk.jpg", "palette.png", "gray16.png", "rgb16.png", "rgba.png"]
    good += ["rotated.jpg", "tiny.png", "strip.png"]

    # skipped, counted and reported
    full = jpeg_bytes(noise_rgb(64, 64, seed=1))
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    png = io.BytesIO()
    Image.fromarray(noise_rgb(64, 64, seed=2)).save(png, "PNG")
    (root / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "not_an_image.png").write_text("this is a text file, not a PNG\n")
    (root / "random.jpg").write_bytes(np.random.default_rng(3).bytes(2000))
    corrupt = bytearray(png.getvalue())
    start = corrupt.find(b"IDAT") + 20
    corrupt[start : start + 64] = bytes(64)
    (root / "corrupt.png").write_bytes(bytes(corrupt))
    write_png_bomb(root / "bomb.png", 100_000, 100_000)  # PIL's own hard limit
    write_png_bomb(root / "big.png", 10_000, 10_000)  # over the default 89 Mpx limit
    bad.update(
        {
            "truncated.jpg": "truncated",
            "truncated.png": "truncated",
            "empty.jpg": "empty",
            "not_an_image.png": "not an image",
            "random.jpg": "not an image",
            "corrupt.png": "corrupt",
            "bomb.png": "decompression bomb",
            "big.png": "decompression bomb",
        }
    )

    # not listed at all: not an image extension, or hidden (macOS resource fork)
    (root / "notes.txt").write_text("not an image\n")
    (root / "._good.jpg").write_bytes(b"\x00\x05\x16\x07")
    return BadFolder(root, sorted(good), bad)
