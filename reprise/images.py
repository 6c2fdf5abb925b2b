"""Images in requests: the caps every service applies, and the one decoder they share.

The gateway checks a chat's images before asking anyone, the cache keys them by
a digest of their pixels, and inference hands the decoded pictures to a
vision-language model: all three refuse the same files for the same reasons,
with INVALID_ARGUMENT naming the field, because they use this module.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reprise.errors import InvalidArgument


@dataclass(frozen=True)
class ImageLimits:
    """What an image may cost before it is decoded.

    A 15 KB PNG can declare 11000x11000 pixels: decoding it takes seconds and
    350 MB. The declared size is in the header, which is read without
    decoding, so such a file is refused in microseconds.
    """

    #: Pixels (width x height) one image may declare; 16.8 M is a 4096x4096 picture.
    max_pixels: int = 4096 * 4096
    #: Bytes of one encoded image.
    max_bytes: int = 8 * 1024 * 1024
    #: Images in one query.
    max_images: int = 8


IMAGE_LIMITS = ImageLimits()


def check_images(images: Sequence[bytes], field: str = "images", limits: ImageLimits = IMAGE_LIMITS) -> None:
    """The cheap checks (count and bytes) that need no decoding at all."""
    if len(images) > limits.max_images:
        raise InvalidArgument(field, f"has {len(images)} images; the limit is {limits.max_images}")
    for i, data in enumerate(images):
        if len(data) > limits.max_bytes:
            raise InvalidArgument(f"{field}[{i}]", f"is {len(data)} bytes; the limit is {limits.max_bytes}")


def check_image(data: bytes, field: str = "images", limits: ImageLimits = IMAGE_LIMITS) -> tuple[int, int]:
    """Byte cap, then the header: a format PIL reads and a declared size within the pixel cap.

    No pixel is decoded (microseconds even for a bomb), so the gateway runs it inline;
    a file whose header is fine but whose data is broken fails later, in :func:`decode_image`.
    Returns the declared (width, height).
    """
    from PIL import Image

    if len(data) > limits.max_bytes:
        raise InvalidArgument(field, f"is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
    except Image.DecompressionBombError:  # PIL's own cap (2x Image.MAX_IMAGE_PIXELS), checked as it opens
        raise InvalidArgument(field, f"declares more pixels than the limit of {limits.max_pixels}") from None
    except Exception as exc:  # not an image, or a hostile header: PIL raises OSError, ValueError, SyntaxError...
        raise InvalidArgument(field, f"not a decodable image ({exc.__class__.__name__})") from None
    if width * height > limits.max_pixels:
        raise InvalidArgument(field, f"declares {width}x{height} pixels ({width * height}); the limit is {limits.max_pixels}")
    return width, height


def check_files(images: Sequence[bytes], field: str = "images", limits: ImageLimits = IMAGE_LIMITS) -> None:
    """Every check that decodes no pixel: count, bytes, and each header (:func:`check_image`)."""
    check_images(images, field, limits)
    for i, data in enumerate(images):
        check_image(data, f"{field}[{i}]", limits)


def decode_image(data: bytes, field: str = "images", limits: ImageLimits = IMAGE_LIMITS) -> Any:
    """The picture in ``data`` as an RGB ``PIL.Image``, turned upright by its EXIF orientation.

    Refuses (INVALID_ARGUMENT) what :func:`check_image` refuses, before any pixel
    is decoded, and any file PIL then cannot decode. Decoding is CPU work of up
    to a few hundred milliseconds: async callers run this in a thread.
    """
    from PIL import Image, ImageOps

    check_image(data, field, limits)
    try:
        with Image.open(io.BytesIO(data)) as img:
            upright = ImageOps.exif_transpose(img).convert("RGB")
            upright.load()  # decode now, inside the try: a truncated file fails here, not in a later reader
            return upright
    except Exception as exc:  # a corrupt or hostile file: PIL raises OSError, ValueError, SyntaxError, struct.error...
        raise InvalidArgument(field, f"not a decodable image ({exc.__class__.__name__})") from None


def pixel_digest(image: Any) -> str:
    """SHA-256 of a decoded RGB picture's size and pixels (see :func:`image_digest`)."""
    h = hashlib.sha256(f"RGB:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def image_digest(data: bytes, field: str = "images", limits: ImageLimits = IMAGE_LIMITS) -> str:
    """SHA-256 of an image's pixels after EXIF orientation, as RGB.

    The file's container, compression and metadata do not matter: a PNG saved
    at another compression level, or a photo whose EXIF says "rotate 90°"
    versus the same photo stored already rotated, give the same digest.
    Refuses what :func:`decode_image` refuses.
    """
    return pixel_digest(decode_image(data, field, limits))


def decode_images(images: Sequence[bytes], field: str = "images", limits: ImageLimits = IMAGE_LIMITS) -> tuple[Any, ...]:
    """:func:`check_images`, then every image decoded (``field[i]`` names the one refused)."""
    check_images(images, field, limits)
    return tuple(decode_image(data, f"{field}[{i}]", limits) for i, data in enumerate(images))
