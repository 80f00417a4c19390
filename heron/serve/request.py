"""Reading a ``POST /v1/predict`` request: its query parameters and the image in its body.

The body is either ``multipart/form-data`` with the image file in the field ``image``, or
``application/json`` ``{"image": "<base64>"}``. Its size is checked against the limit before
reading (Content-Length) and while reading (bytes counted), so an oversized upload is
refused without being held in memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from heron.serve.decode import decode_base64_image
from heron.serve.errors import ServeError

__all__ = ["PredictParams", "parse_predict_params", "read_image_bytes"]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
# Room for multipart headers and boundaries, or for the JSON around the base64 string.
_FRAMING_BYTES = 64 * 1024


@dataclass(frozen=True)
class PredictParams:
    """The query parameters of ``POST /v1/predict``.

    Attributes:
        score_threshold: instances scoring below it are left out, in [0, 1].
        class_ids: only instances of these class ids are returned (None: all).
        visualize: whether to add a PNG of the drawn result.
    """

    score_threshold: float = 0.0
    class_ids: tuple[int, ...] | None = None
    visualize: bool = False


def _parse_threshold(text: str | None) -> float:
    if text is None or text == "":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise ServeError(
            422, f"query parameter score_threshold must be a number in [0, 1], got {text!r}"
        ) from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ServeError(
            422, f"query parameter score_threshold must be a number in [0, 1], got {text!r}"
        )
    return value


def _parse_classes(text: str | None, class_names: Sequence[str]) -> tuple[int, ...] | None:
    if text is None or text.strip() == "":
        return None
    ids: list[int] = []
    for item in (t.strip() for t in text.split(",")):
        if item in class_names:
            ids.append(list(class_names).index(item))
            continue
        try:
            class_id = int(item)
        except ValueError:
            raise ServeError(
                422,
                f"query parameter classes: {item!r} is neither a class id nor one of the class "
                f"names {list(class_names)}",
            ) from None
        if class_id < 0 or (class_names and class_id >= len(class_names)):
            raise ServeError(
                422,
                f"query parameter classes: class id {class_id} is out of range "
                f"[0, {len(class_names) - 1}]",
            )
        ids.append(class_id)
    return tuple(ids)


def _parse_bool(name: str, text: str | None) -> bool:
    if text is None or text == "":
        return False
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ServeError(422, f"query parameter {name} must be true or false, got {text!r}")


def parse_predict_params(request: Request, class_names: Sequence[str]) -> PredictParams:
    """The :class:`PredictParams` of `request`'s query string.

    Raises:
        ServeError: 422 naming the parameter when one is malformed or out of range. Other
            parameters are ignored.
    """
    query = request.query_params
    return PredictParams(
        score_threshold=_parse_threshold(query.get("score_threshold")),
        class_ids=_parse_classes(query.get("classes"), class_names),
        visualize=_parse_bool("visualize", query.get("visualize")),
    )


async def _limited_stream(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks; raises 413 as soon as more than `max_bytes` arrived."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise ServeError(413, f"request body exceeds the limit of {max_bytes} bytes")
        yield chunk


async def _read_multipart(request: Request, max_bytes: int) -> bytes:
    parser = MultiPartParser(request.headers, _limited_stream(request, max_bytes), max_files=4)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise ServeError(400, f"malformed multipart/form-data body: {e.message}") from None
    try:
        image = form.get("image")
        if image is None:
            raise ServeError(
                400, f"no 'image' field in the multipart/form-data body (fields: {list(form)})"
            )
        if not isinstance(image, UploadFile):
            raise ServeError(400, "field 'image' must be a file upload, got a text field")
        return await image.read()
    finally:
        await form.close()


async def _read_json(request: Request, max_bytes: int) -> bytes:
    body = b"".join([chunk async for chunk in _limited_stream(request, max_bytes)])
    # Parsing and base64-decoding megabytes takes milliseconds: keep it off the event loop.
    return await run_in_threadpool(_image_from_json, body)


def _image_from_json(body: bytes) -> bytes:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ServeError(400, f"malformed JSON body: {e}") from None
    if not isinstance(payload, dict):
        raise ServeError(
            422, f"JSON body must be an object with an 'image' field, got {type(payload).__name__}"
        )
    if "image" not in payload:
        raise ServeError(400, f"no 'image' field in the JSON body (keys: {sorted(payload)})")
    if not isinstance(payload["image"], str):
        raise ServeError(
            422,
            f"JSON field 'image' must be a base64 string, got {type(payload['image']).__name__}",
        )
    return decode_base64_image(payload["image"])


async def read_image_bytes(request: Request, max_image_bytes: int) -> bytes:
    """The uploaded image file's bytes.

    The body may be up to 4/3 of `max_image_bytes` (the size of the image in base64) plus
    64 KiB of framing; the image itself up to `max_image_bytes`.

    Raises:
        ServeError: 415 for another Content-Type; 413 when the body or the image is over
            the limit; 400 when the body is malformed or has no ``image`` field; 422 when
            the JSON is not an object or its ``image`` is not a string.
    """
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in ("multipart/form-data", "application/json"):
        raise ServeError(
            415,
            f"request Content-Type {media_type or '(none)'!r} is not accepted; send "
            "multipart/form-data (field 'image') or application/json ({\"image\": base64})",
        )
    max_body = max_image_bytes * 4 // 3 + _FRAMING_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise ServeError(
            413, f"request body of {declared} bytes exceeds the limit of {max_body} bytes"
        )
    if media_type == "multipart/form-data":
        data = await _read_multipart(request, max_body)
    else:
        data = await _read_json(request, max_body)
    if len(data) > max_image_bytes:
        raise ServeError(
            413, f"image of {len(data)} bytes exceeds the limit of {max_image_bytes} bytes"
        )
    return data
