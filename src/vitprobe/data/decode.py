"""Robust decoding of one image file into an 8-bit RGB ``PIL.Image``.

Every failure becomes a :class:`DecodeError` with a short human reason, so the loader
can skip the file, count it and report it; nothing here is allowed to crash a run.

Handled explicitly (each is tested in ``tests/data``):

* zero-byte files, non-images with image extensions, corrupt and truncated files
  (PIL's ``LOAD_TRUNCATED_IMAGES`` is *not* enabled: a grey-filled half image would be
  a silent corruption of the statistics) -> ``DecodeError``;
* decompression bombs: images with more than ``max_pixels`` pixels (default PIL's
  ``Image.MAX_IMAGE_PIXELS``, about 89 megapixels) are rejected from the header alone,
  before any pixel is decoded;
* EXIF orientation is applied (``ImageOps.exif_transpose``), as a viewer would show it;
* grayscale, bilevel, palette, CMYK (through its embedded ICC profile when there is
  one), YCbCr -> RGB;
* 16-bit and 32-bit integer grayscale (``I;16*``, ``I``) are scaled by 1/257 to 8 bits
  (PIL's own ``convert("RGB")`` clips them, turning most pixels white); float (``F``)
  images are taken as [0, 1] when their maximum is <= 1, else as [0, 255];
* alpha (RGBA, LA, PA, palette transparency) is composited over white, the way the
  image is displayed on a page; dropping alpha would expose arbitrary colours under
  fully transparent pixels;
* multi-frame files (GIF, TIFF) use their first frame.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALPHA_BACKGROUND = (255, 255, 255)

__all__ = ["ALPHA_BACKGROUND", "DecodeError", "decode_image", "to_rgb"]


class DecodeError(Exception):
    """One image could not be decoded; ``reason`` says why (shown in the skip report)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_image(data: bytes | str | os.PathLike, *, max_pixels: int | None = None) -> Image.Image:
    """Decode ``data`` (the file's bytes, or a path) into an 8-bit RGB image.

    Args:
        data: encoded bytes or a file path.
        max_pixels: largest accepted width * height; ``None`` means PIL's
            ``Image.MAX_IMAGE_PIXELS``. PIL's own hard limit (twice that) also applies.

    Returns:
        A loaded ``PIL.Image`` in mode ``"RGB"``, EXIF orientation applied.

    Raises:
        DecodeError: the file is missing, empty, not an image, corrupt, truncated,
            too large, or in a mode that cannot be converted.
    """
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if isinstance(data, bytes | bytearray | memoryview):
        if len(data) == 0:
            raise DecodeError("empty file (0 bytes)")
        stream: io.BufferedIOBase = io.BytesIO(bytes(data))
    else:
        try:
            if os.path.getsize(data) == 0:
                raise DecodeError("empty file (0 bytes)")
            stream = open(data, "rb")  # closed in the finally below
        except FileNotFoundError:
            raise DecodeError("file not found") from None
        except IsADirectoryError:
            raise DecodeError("is a directory, not a file") from None
        except OSError as err:
            raise DecodeError(f"cannot read file: {err.strerror or err}") from None
    try:
        return _decode_stream(stream, limit)
    finally:
        stream.close()


def _decode_stream(stream: io.BufferedIOBase, limit: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # our own limit below is the one that matters; PIL's warning would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(stream)
    except Image.DecompressionBombError as err:
        raise DecodeError(f"decompression bomb: {err}") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except Exception as err:  # PIL raises many types for malformed headers
        kind = "truncated file" if "truncat" in str(err).lower() else "corrupt header"
        raise DecodeError(f"{kind}: {type(err).__name__}: {err}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise DecodeError(f"invalid size {width}x{height}")
    if limit is not None and width * height > limit:
        raise DecodeError(
            f"decompression bomb: {width}x{height} = {width * height} pixels > limit {limit}"
        )
    try:
        img.load()
    except Exception as err:  # OSError("image file is truncated"), SyntaxError, ...
        text = str(err)
        kind = "truncated" if "truncat" in text.lower() else "corrupt"
        raise DecodeError(f"{kind} image data ({img.format}): {text}") from None
    try:
        img = _apply_exif_orientation(img)
        return to_rgb(img)
    except DecodeError:
        raise
    except Exception as err:
        raise DecodeError(f"cannot convert mode {img.mode} to RGB: {err}") from None


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        # a malformed EXIF block must not cost the image; show it as stored
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a loaded image of any PIL mode to 8-bit RGB (see the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(img)
    if mode == "P":
        palette_mode = getattr(img.palette, "mode", "RGB")
        has_alpha = "transparency" in img.info or palette_mode == "RGBA"
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms  # optional in some PIL builds

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(img, source, srgb, outputMode="RGB")
        except Exception:
            pass  # broken profile: fall back to PIL's device conversion below
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    array = np.asarray(img)
    if img.mode == "F":
        values = array.astype(np.float64)
        finite_max = np.nanmax(values) if values.size else 0.0
        scale = 255.0 if finite_max <= 1.0 else 1.0
        gray = np.clip(np.nan_to_num(values * scale), 0, 255)
    else:
        # I;16 variants hold 0..65535; "I" (32-bit) comes from 16-bit PGM/TIFF too.
        values = array.astype(np.float64)
        if img.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        gray = np.clip(values, 0, 255)
    gray8 = np.rint(gray).astype(np.uint8)
    return Image.fromarray(np.repeat(gray8[:, :, None], 3, axis=2), "RGB")
