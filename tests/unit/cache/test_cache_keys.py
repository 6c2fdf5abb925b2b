"""Key normalization and hashing."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from cache_svc.core.keys import exact_key, image_digest
from cache_svc.core.normalize import Normalization
from cache_svc.core.types import CacheQuery
from reprise.domain import Decoding, Role, Turn
from reprise.errors import InvalidArgument

N = Normalization()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("ＡＢＣ１２３！", "abc123"),  # full-width -> half-width, case, trailing punctuation
        ("Hello   \t world\n", "hello world"),
        ("Is it good?", "is it good"),
        ("好吃吗？", "好吃吗"),
        ("Straße", "STRASSE"),
    ],
)
def test_normalization_equates(a: str, b: str) -> None:
    assert N(a) == N(b)


@pytest.mark.parametrize(("a", "b"), [("turn on", "turn off"), ("a, b", "a b"), ("i like it", "i don't like it")])
def test_normalization_keeps_meaning(a: str, b: str) -> None:
    assert N(a) != N(b)


def test_punctuation_only_text_survives() -> None:
    assert N("?!") == "?!"


def test_each_step_can_be_turned_off() -> None:
    assert Normalization(casefold=False)("ABC") == "ABC"
    assert Normalization(strip_trailing_punctuation=False)("ok!") == "ok!"
    assert Normalization(nfkc=False)("ＡＢＣ") == "ａｂｃ"
    assert Normalization(collapse_whitespace=False)("a  b") == "a  b"


def _q(**kw: object) -> CacheQuery:
    base = dict(namespace="t1", task="chat", text="Hello there", model_id="m", model_revision="r1")
    base.update(kw)
    return CacheQuery(**base)  # type: ignore[arg-type]


def test_key_is_sha256_hex_and_stable() -> None:
    k = exact_key(_q(), N)
    assert len(k) == 64 and int(k, 16) >= 0
    assert exact_key(_q(text="hello   THERE."), N) == k


@pytest.mark.parametrize(
    "change",
    [
        {"namespace": "t2"},
        {"model_revision": "r2"},
        {"model_id": "other"},
        {"task": "sentiment"},
        {"system_prompt": "be terse"},
        {"history": (Turn(Role.USER, "hi"), Turn(Role.ASSISTANT, "hello"))},
        {"decoding": Decoding(max_new_tokens=5)},
        {"decoding": Decoding(temperature=0.7)},
        {"image_digests": ("abc",)},
    ],
)
def test_everything_that_changes_the_answer_changes_the_key(change: dict) -> None:
    assert exact_key(_q(**change), N) != exact_key(_q(), N)


def test_sampling_only_params_do_not_split_greedy_keys() -> None:
    assert exact_key(_q(decoding=Decoding(seed=1, top_p=0.5)), N) == exact_key(_q(), N)
    assert exact_key(_q(decoding=Decoding(temperature=0.7, seed=1)), N) != exact_key(
        _q(decoding=Decoding(temperature=0.7, seed=2)), N
    )


def _png(img: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()


def test_image_digest_ignores_encoding_and_follows_exif_orientation() -> None:
    img = Image.new("RGB", (4, 3))
    img.putdata([(i * 20 % 256, i * 50 % 256, i * 90 % 256) for i in range(12)])
    assert image_digest(_png(img, compress_level=0)) == image_digest(_png(img, compress_level=9))
    # The same picture stored rotated, with EXIF saying "rotate back" (orientation 6 = 90° CW).
    rotated = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    rotated.save(buf, format="PNG", exif=exif)
    assert image_digest(buf.getvalue()) == image_digest(_png(img))
    assert image_digest(_png(rotated)) != image_digest(_png(img))


def test_undecodable_image_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="images"):
        image_digest(b"not an image")


def test_partition_key_ignores_only_the_text() -> None:
    from cache_svc.core.keys import partition_key

    assert partition_key(_q(text="a"), N) == partition_key(_q(text="something else"), N)
    assert partition_key(_q(namespace="t2"), N) != partition_key(_q(), N)
    assert partition_key(_q(model_revision="r2"), N) != partition_key(_q(), N)


def test_vector_id_is_a_stable_positive_int64() -> None:
    from cache_svc.core.keys import vector_id

    k = exact_key(_q(), N)
    assert vector_id(k) == vector_id(k) and 0 <= vector_id(k) < 2**63


def test_image_digest_same_pixels_as_jpeg_and_png_differ_only_if_lossy() -> None:
    img = Image.new("RGB", (8, 8), (10, 200, 30))
    # RGBA with an opaque alpha channel is the same picture once converted to RGB.
    assert image_digest(_png(img.convert("RGBA"))) == image_digest(_png(img))
