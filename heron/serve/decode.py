"""Image bytes (as uploaded) to the (H, W, 3) uint8 BGR array that the predictors take.

Only JPEG, PNG, BMP and WebP are accepted. The file type is read from the bytes (not from
a file name or a declared content type), EXIF orientation is applied, and every problem
becomes a :class:`~heron.serve.errors.ServeError` with the status the HTTP API promises.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np

from heron.serve.errors import ServeError

__all__ = ["ACCEPTED_FORMATS", "decode_base64_image", "decode_image"]

# Pillow format names of the accepted image types.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")

_DATA_URL = re.compile(r"^data:[^,]*;base64,", re.IGNORECASE)


def decode_base64_image(text: str, field: str = "image") -> bytes:
    """The bytes of a base64 string, with or without a ``data:image/...;base64,`` prefix.

    Whitespace (e.g. line breaks every 76 characters) is ignored.

    Raises:
        ServeError: 400 when `text` is not valid base64.
    """
    payload = _DATA_URL.sub("", text.strip(), count=1)
    payload = "".join(payload.split())
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ServeError(400, f"field {field!r} is not valid base64: {e}") from None


def decode_image(data: bytes, field: str = "image") -> np.ndarray:
    """Decode an image file's bytes to an (H, W, 3) uint8 array in BGR order.

    The EXIF orientation tag is applied, and grayscale, palette, alpha and CMYK images are
    converted to RGB first (alpha is dropped).

    Args:
        data: the bytes of a JPEG, PNG, BMP or WebP file.
        field: the request field the bytes came from, for error messages.

    Raises:
        ServeError: 400 when the bytes are empty, not an image or a truncated image; 415
            when the image is of another type (GIF, TIFF, ...); 413 when it has more pixels
            than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ServeError(400, f"field {field!r} is empty (0 bytes): expected an image file")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ServeError(
            400,
            f"field {field!r} is not an image: the {len(data)} bytes are none of the "
            f"accepted types ({', '.join(ACCEPTED_FORMATS)})",
        ) from None
    except Image.DecompressionBombError as e:
        raise ServeError(413, f"field {field!r}: image too large: {e}") from None
    with image:
        if image.format not in ACCEPTED_FORMATS:
            raise ServeError(
                415,
                f"field {field!r}: image type {image.format} is not accepted; accepted types: "
                f"{', '.join(ACCEPTED_FORMATS)}",
            )
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and image.width * image.height > limit:
            raise ServeError(
                413,
                f"field {field!r}: image of {image.width}x{image.height} pixels exceeds the "
                f"limit of {limit} pixels",
            )
        try:
            image.load()
            rgb = ImageOps.exif_transpose(image).convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:
            # Pillow reports a cut-off file as OSError("image file is truncated ...").
            raise ServeError(
                400, f"field {field!r}: cannot decode the {image.format} image ({e})"
            ) from None
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
