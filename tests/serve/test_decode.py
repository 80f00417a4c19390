"""Image bytes to BGR arrays, and the errors for what is not an accepted image."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from heron.serve.decode import decode_base64_image, decode_image
from heron.serve.errors import ServeError

# (H, W, 3) RGB test image: each pixel's channels are (row * 10, column * 10, 200)
RGB = np.stack(
    np.broadcast_arrays(np.arange(6)[:, None] * 10, np.arange(8)[None, :] * 10, 200), axis=-1
).astype(np.uint8)


def _encode(image: Image.Image, format: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("format", ["PNG", "BMP"])
def test_lossless_formats_decode_to_the_same_pixels_in_bgr(format):
    decoded = decode_image(_encode(Image.fromarray(RGB), format))
    assert decoded.dtype == np.uint8 and decoded.shape == (6, 8, 3)
    np.testing.assert_array_equal(decoded, RGB[:, :, ::-1])


def test_webp_lossless_decodes_to_the_same_pixels():
    decoded = decode_image(_encode(Image.fromarray(RGB), "WEBP", lossless=True))
    np.testing.assert_array_equal(decoded, RGB[:, :, ::-1])


def test_jpeg_decodes_close_to_the_original():
    flat = np.full((16, 16, 3), (200, 40, 10), dtype=np.uint8)  # one RGB color
    decoded = decode_image(_encode(Image.fromarray(flat), "JPEG", quality=95))
    # a flat color survives JPEG within a few levels; BGR order puts blue (10) first
    assert np.abs(decoded.astype(int) - [10, 40, 200]).max() <= 3


def test_grayscale_and_rgba_become_three_channels():
    gray = decode_image(_encode(Image.fromarray(RGB[:, :, 0]), "PNG"))
    np.testing.assert_array_equal(gray, np.repeat(RGB[:, :, :1], 3, axis=2))
    rgba = np.concatenate([RGB, np.full((6, 8, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(
        decode_image(_encode(Image.fromarray(rgba), "PNG")), RGB[:, :, ::-1]
    )


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the stored image is shown rotated 90 degrees clockwise
    data = _encode(Image.fromarray(RGB), "JPEG", exif=exif, quality=100, subsampling=0)
    decoded = decode_image(data)
    assert decoded.shape == (8, 6, 3)  # (W, H) of the stored image
    # Turned clockwise, the stored bottom-left pixel (row 5, column 0: RGB (50, 0, 200))
    # is shown top-left; BGR order, within JPEG's error
    assert np.abs(decoded[0, 0].astype(int) - [200, 0, 50]).max() <= 8


@pytest.mark.parametrize("format", ["GIF", "TIFF"])
def test_other_image_types_get_415_naming_the_type(format):
    with pytest.raises(ServeError, match=f"image type {format} is not accepted") as info:
        decode_image(_encode(Image.fromarray(RGB), format))
    assert info.value.status == 415
    assert "JPEG, PNG, BMP, WEBP" in info.value.message


@pytest.mark.parametrize(
    ("data", "words"),
    [(b"", "empty"), (b"GIF89 but not really", "not an image"), (b"\x00" * 100, "not an image")],
)
def test_non_images_get_400(data, words):
    with pytest.raises(ServeError, match=words) as info:
        decode_image(data)
    assert info.value.status == 400


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_truncated_image_gets_400(format):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), format)
    with pytest.raises(ServeError, match="cannot decode") as info:
        decode_image(data[: len(data) * 2 // 3])
    assert info.value.status == 400


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_more_pixels_than_the_bomb_limit_gets_413(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # RGB has 6 * 8 = 48 pixels
    with pytest.raises(
        ServeError, match="image of 8x6 pixels exceeds the limit of 40 pixels"
    ) as info:
        decode_image(_encode(Image.fromarray(RGB), "PNG"))
    assert info.value.status == 413


def test_base64_with_and_without_data_url_and_line_breaks():
    data = bytes(range(256)) * 3
    text = base64.b64encode(data).decode()
    assert decode_base64_image(text) == data
    assert decode_base64_image("data:image/png;base64," + text) == data
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert decode_base64_image(wrapped) == data


@pytest.mark.parametrize("text", ["abc", "not base64!!", "ab$d"])
def test_bad_base64_gets_400_naming_the_field(text):
    with pytest.raises(ServeError, match="field 'image' is not valid base64") as info:
        decode_base64_image(text)
    assert info.value.status == 400
