"""Image bombs are refused by their declared size before any pixel is decoded (issue 24, item 3).

Before: a 15 KB PNG declaring 11000x11000 pixels held a Lookup (and a
concurrent Stats) for 3.8 s while it was decoded on the event loop, and
16000x16000 gave INTERNAL.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib

import grpc
import pytest
from PIL import Image, ImageFile

from cache_svc import servicer
from cache_svc.core.keys import IMAGE_LIMITS, ImageLimits, check_images, image_digest
from reprise.cache.v1 import cache_pb2 as pb
from reprise.cache.v1 import cache_pb2_grpc as pb_grpc
from reprise.errors import InvalidArgument
from reprise.rpc.server import ServiceHost


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header declares ``width`` x ``height`` 8-bit grey pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # the first rows; a decoder would want them all
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any pixel is decoded."""

    def refuse(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("side", [11000, 16000, 60000])
def test_a_declared_size_over_the_pixel_cap_is_refused_before_decoding(side: int, no_decoding: None) -> None:
    data = bomb(side, side)
    assert len(data) < 20_000
    with pytest.raises(InvalidArgument, match=r"^query\.images\[0\]: declares") as err:
        image_digest(data, "query.images[0]")
    assert str(IMAGE_LIMITS.max_pixels) in err.value.message


def test_byte_and_count_caps_and_a_picture_within_them() -> None:
    small = ImageLimits(max_pixels=64 * 64, max_bytes=10_000, max_images=2)
    with pytest.raises(InvalidArgument, match=r"^images\[0\]: is \d+ bytes; the limit is 10"):
        check_images([b"x" * 10_001], limits=small)
    with pytest.raises(InvalidArgument, match="^images: has 3 images; the limit is 2"):
        check_images([b"x"] * 3, limits=small)
    with pytest.raises(InvalidArgument, match="declares 65x64"):
        image_digest(_png((65, 64)), limits=small)
    assert len(image_digest(_png((64, 64)), limits=small)) == 64
    with pytest.raises(InvalidArgument, match="not a decodable image"):
        image_digest(bomb(64, 64)[:60])  # cut inside the pixel data


async def test_digests_are_computed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []
    original = servicer.image_digest

    def spy(data: bytes, field: str = "images") -> str:
        threads.append(threading.current_thread())
        return original(data, field)

    monkeypatch.setattr(servicer, "image_digest", spy)
    digests = await servicer.image_digests([_png((32, 32)), _png((16, 8))])
    assert len(digests) == 2 and threads and all(t is not threading.main_thread() for t in threads)


async def test_a_bomb_in_a_lookup_is_invalid_argument_and_the_service_keeps_serving(cache_host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(cache_host.address) as channel:
        stub = pb_grpc.CacheStub(channel)
        for side in (11000, 16000):
            query = pb.CacheQuery(namespace="t", task="chat", text="what is this?", images=[bomb(side, side)])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Lookup(pb.LookupRequest(query=query), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("query.images[0]: declares")
        ok = await stub.Lookup(pb.LookupRequest(query=pb.CacheQuery(namespace="t", task="chat", text="hi", images=[_png((8, 8))])))
        assert ok.key
