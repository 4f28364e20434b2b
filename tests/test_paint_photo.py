"""GANPaint "Open image": uploads are validated (type, size, shape, bombs), inverted in memory, painted."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import gdx
from gdx.paint import engine_from_run
from gdx.photos import MAX_PIXELS, read_image
from gdx_browser import make_run

pytest.importorskip("fastapi")
from starlette.testclient import TestClient  # noqa: E402

from gdx.paint.server import create_app  # noqa: E402

FAST = {"latent_steps": 20, "feature_steps": 40, "candidates": 8, "anchor": 0.0}  # toy: see tests/test_invert.py


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    engine = engine_from_run(make_run(tmp_path_factory.mktemp("run"), "toy", "toy", "features", samples=60))
    app = create_app(engine, max_body=2_000_000, invert_options=FAST)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def png(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **kw)
    return buf.getvalue()


def toy_photo() -> np.ndarray:
    gen = gdx.load_generator("toy")
    with torch.no_grad():
        x = gen.generate(gen.sample_latents(1, seed=123))[0]
    return ((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()


def png_bomb(side: int) -> bytes:
    """A 1-bit PNG of ``side`` x ``side`` zeros: a few kB on disk, ``side**2`` pixels decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\0" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_open_paint_undo(client):
    photo = toy_photo()
    r = client.post("/api/photo", content=png(photo), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["photo"].startswith("p") and out["psnr"] > 20
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["image"].split(",", 1)[1]))).convert("RGB"))
    assert np.array_equal(shown, photo)  # the canvas is the photo itself, not a reconstruction
    again = client.get(f"/api/photo/{out['photo']}.png")
    assert again.status_code == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(again.content))), photo)
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:20, 8:20] = True
    stroke = {"concept": "sun", "mode": "draw", "mask": {"width": 32, "height": 32,
                                                         "bits": base64.b64encode(np.packbits(mask)).decode()}}
    edited = client.post("/api/edit", json={"photo": out["photo"], "strokes": [stroke]})
    assert edited.status_code == 200, edited.text
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(edited.json()["image"].split(",", 1)[1]))).convert("RGB"))
    labels = gdx.load_segmenter("toy").segment(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert (labels[0][torch.from_numpy(mask)] == 0).float().mean() >= 0.5  # sun under the brush
    undone = client.post("/api/edit", json={"photo": out["photo"], "strokes": []})
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(undone.json()["image"].split(",", 1)[1]))).convert("RGB"))
    assert np.array_equal(rgb, photo)
    # a JPEG of another size is centre-cropped and resized to the generator's 32 x 32
    buf = io.BytesIO()
    Image.fromarray(np.repeat(np.repeat(photo, 3, 0), 4, 1)).save(buf, format="JPEG", quality=95)
    r = client.post("/api/photo", content=buf.getvalue(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text


BAD = {
    "not an image": (b"hello, this is text" * 10, "image/png", 415, "not a PNG or JPEG"),
    "wrong content type": (None, "text/plain", 415, "Content-Type"),
    "type mismatch": (None, "image/jpeg", 415, "image/png file"),
    "50 MB": (b"\x89PNG\r\n\x1a\n" + b"\0" * 50_000_000, "image/png", 413, "over"),
    "1 x 100000": ("strip", "image/png", 422, "1"),
    "bomb": ("bomb", "image/png", 422, "megapixels"),
    "truncated": ("truncated", "image/png", 422, "damaged"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_uploads_are_4xx_with_a_message(client, case):
    body, ctype, status, words = BAD[case]
    photo = png(toy_photo())
    body = {None: photo, "strip": png(np.zeros((1, 100_000), np.uint8)), "bomb": png_bomb(6_400),
            "truncated": photo[: len(photo) // 2]}.get(body, body) if not isinstance(body, bytes) else body
    r = client.post("/api/photo", content=body, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert client.get("/api/info").status_code == 200  # still serving


def test_unknown_photo_ids(client):
    assert client.post("/api/edit", json={"photo": "p999999", "strokes": []}).status_code == 404
    assert client.post("/api/edit", json={"photo": "../etc/passwd", "strokes": []}).status_code == 422
    assert client.get("/api/photo/x.png").status_code == 422


def test_bomb_is_refused_before_decoding():
    with pytest.raises(gdx.PhotoError, match="megapixels"):
        read_image(png_bomb(int(MAX_PIXELS**0.5) + 100), size=(32, 32))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", png(np.zeros((4, 4), np.uint8))[:40]]),
       body=st.binary(max_size=2000),
       ctype=st.sampled_from(["image/png", "image/jpeg", "text/plain", "", "image/png; charset=x", "IMAGE/PNG"]))
def test_any_upload_gets_an_answer_never_a_crash(client, prefix, body, ctype):
    r = client.post("/api/photo", content=prefix + body, headers={"Content-Type": ctype} if ctype else {})
    assert r.status_code in (200, 413, 415, 422), r.text
    assert isinstance(r.json()["detail"] if r.status_code != 200 else r.json()["photo"], str)
    assert client.get("/api/info").status_code == 200
