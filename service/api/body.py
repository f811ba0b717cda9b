"""Reading the uploaded image from a request, with the byte limit enforced while streaming.

Accepted: ``multipart/form-data`` with exactly one file part named ``image`` (a filename is
optional; parsed by :mod:`darkpose.service.api.multipart`, in a worker thread for large bodies), or
a raw
body with ``Content-Type`` image/jpeg, image/png, image/webp, image/bmp (or
application/octet-stream; the bytes' magic decides the format either way).  A raw body with any
other Content-Type (``curl --data-binary`` without ``-H`` sends
``application/x-www-form-urlencoded``) is accepted when its bytes are an accepted image format;
otherwise it is refused 415.  An empty body is a 400 whatever its Content-Type.
"""

from __future__ import annotations

import logging

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request

from darkpose.service.api.multipart import parse_multipart
from darkpose.service.core.errors import (
    InputError,
    InvalidImage,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from darkpose.service.core.io import ACCEPTED_FORMATS, ACCEPTED_TEXT, sniff_format

logger = logging.getLogger(__name__)

RAW_IMAGE_TYPES: frozenset[str] = frozenset(
    {
        "image/jpeg",
        "image/jpg",
        "image/png",
        "image/webp",
        "image/bmp",
        "image/x-ms-bmp",
        "application/octet-stream",
    }
)
MULTIPART = "multipart/form-data"
#: Room for multipart boundaries and part headers on top of the image byte limit.
MULTIPART_OVERHEAD = 64 * 1024


class RequestTimeoutError(InputError):
    """The body did not arrive within the request timeout (HTTP 408)."""

    status_code = 408
    code = "request_timeout"


class ClientGoneError(InputError):
    """The client closed the connection before the body was complete."""

    code = "client_disconnected"


def media_type(request: Request) -> str:
    """The request's ``Content-Type`` without parameters, lower case ("" when absent)."""
    raw = request.headers.get("content-type", "")
    return raw.split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, refusing it as soon as it is known to exceed ``limit`` bytes.

    Raises ``PayloadTooLarge`` (by ``Content-Length`` before reading, or while streaming),
    ``RequestTimeoutError`` when it takes longer than ``timeout_s``, ``ClientGoneError`` on a
    disconnect.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise InvalidImage(
                f"Content-Length: expected an integer, got {declared[:40]!r}"
            ) from None
        if n > limit:
            raise PayloadTooLarge(f"request body: expected at most {limit} bytes, got {n}")
    buf = bytearray()
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                buf += chunk
                if len(buf) > limit:
                    raise PayloadTooLarge(
                        f"request body: expected at most {limit} bytes, got more than {limit}"
                    )
    except TimeoutError:
        raise RequestTimeoutError(
            f"request body: expected it within {timeout_s:g} s, got {len(buf)} bytes by then"
        ) from None
    except ClientDisconnect:
        raise ClientGoneError(
            f"request body: expected a complete upload, the client left after {len(buf)} bytes"
        ) from None
    return bytes(buf)


#: Bodies larger than this are parsed in a worker thread (the event loop stays free).
PARSE_IN_THREAD_BYTES = 256 * 1024


async def extract_image(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The uploaded image bytes of a ``POST /pose`` request (see module docstring)."""
    mtype = media_type(request)
    if mtype == MULTIPART:
        body = await read_body(request, max_bytes + MULTIPART_OVERHEAD, timeout_s)
        content_type = request.headers.get("content-type", "")
        if len(body) > PARSE_IN_THREAD_BYTES:
            return await anyio.to_thread.run_sync(
                image_from_multipart, body, content_type, max_bytes
            )
        return image_from_multipart(body, content_type, max_bytes)
    if mtype in RAW_IMAGE_TYPES:
        body = await read_body(request, max_bytes, timeout_s)
        if not body:
            raise InvalidImage("request body: expected image bytes, got an empty body")
        return body
    # Any other (or no) Content-Type, e.g. curl --data-binary without -H, which says
    # application/x-www-form-urlencoded: the bytes decide.  An accepted image format is taken;
    # anything else stays 415, as before, now known from the bytes rather than the header.
    body = await read_body(request, max_bytes, timeout_s)
    if not body:  # e.g. curl -X POST without --data-binary: 400 whatever the Content-Type
        raise InvalidImage(
            "request body: expected an image (raw bytes, or multipart with a file field "
            "'image'), got an empty body"
        )
    fmt = sniff_format(body[:32])
    if fmt is not None and fmt in ACCEPTED_FORMATS:
        logger.debug("Content-Type %r: the body is a %s image; accepted", mtype, fmt)
        return body
    accepted = ", ".join(sorted({MULTIPART} | RAW_IMAGE_TYPES))
    raise UnsupportedMediaType(
        f"Content-Type: expected one of {accepted} (or a body whose bytes are "
        f"{ACCEPTED_TEXT}), got {repr(mtype) if mtype else 'no Content-Type'}"
    )


def image_from_multipart(body: bytes, content_type: str, max_bytes: int) -> bytes:
    """The ``image`` part of a complete multipart body (with or without a filename); other
    parts may be text fields, but no second file."""
    if not body:
        raise InvalidImage("multipart body: expected a field 'image', got an empty body")
    parts = parse_multipart(body, content_type)
    files = [p for p in parts if p.filename is not None or p.name == "image"]
    images = [p for p in files if p.name == "image"]
    if len(files) > 1:
        names = [p.name for p in files]
        raise InvalidImage(
            f"multipart body: expected exactly one file (field 'image'), got {len(files)} "
            f"files in fields {names}"
        )
    if not images:
        fields = sorted({p.name for p in parts})
        raise InvalidImage(
            f"multipart body: expected a file field 'image', got fields {fields or 'none'}"
        )
    data = images[0].data
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image: expected at most {max_bytes} bytes, got {len(data)}")
    if not data:
        raise InvalidImage("multipart field 'image': expected image bytes, got an empty file")
    return data
