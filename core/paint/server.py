"""The GANPaint HTTP API (FastAPI) and the static page.

Endpoints (the OpenAPI schema is served at ``/openapi.json``, docs at ``/docs``):

* ``GET /api/info``: the model, layer, image size, grid and the paintable concepts.
* ``GET /api/sample/{sample}.png``: an unedited sample (cached).
* ``POST /api/edit``: a sample id (or a photo id), n units per concept and the list of
  strokes; returns the edited image as a base64 PNG.
* ``POST /api/photo``: a PNG or JPEG as the raw request body (``Content-Type`` image/png or
  image/jpeg); the photo is inverted into the generator (:func:`gdx.invert`) and kept in
  memory only (never written to disk) under a server-made id, which ``/api/edit`` takes.
* ``GET /api/photo/{id}.png``: an opened photo, unedited.

Input discipline: every field is validated (types, ranges, mask sizes), bodies over
``max_body`` bytes are refused with 413 before they are read, and errors are 4xx with
a message. Nothing in a request is ever used as a file path: the page's files are
read from the package by fixed names.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Path as PathParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gdx.concept_prior import ConceptPrior
from gdx.errors import PaintError, PhotoError
from gdx.interfaces import Segmenter
from gdx.paint.engine import MAX_UNITS, PaintEngine, Stroke
from gdx.paint.worker import ModelThread
from gdx.photos import FORMATS, read_image, sniff_format

MAX_SAMPLE = 2**31 - 1
MAX_MASK_SIDE = 1024
MAX_STROKES = 256
#: Default request body limit: 256 strokes at 256 x 256 fit comfortably.
DEFAULT_MAX_BODY = 4 * 1024 * 1024
#: Photos kept in memory at once (the oldest is dropped first).
MAX_PHOTOS = 8
PHOTO_ID = r"^p[0-9]{1,12}$"
STATIC = {"paint.js": "text/javascript; charset=utf-8", "paint.css": "text/css; charset=utf-8"}


class MaskIn(BaseModel):
    """A brush mask: ``width`` x ``height`` bits, row-major, packed MSB first (numpy ``packbits``), base64."""

    model_config = ConfigDict(extra="forbid")
    width: int = Field(ge=1, le=MAX_MASK_SIDE)
    height: int = Field(ge=1, le=MAX_MASK_SIDE)
    bits: str = Field(max_length=(MAX_MASK_SIDE * MAX_MASK_SIDE // 8) * 4 // 3 + 8)


class StrokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    concept: str = Field(min_length=1, max_length=200)
    mode: Literal["draw", "remove"]
    mask: MaskIn


class EditIn(BaseModel):
    """An edit request: all strokes so far (the page keeps them; undo = drop the last)."""

    model_config = ConfigDict(extra="forbid")
    sample: int = Field(default=0, ge=0, le=MAX_SAMPLE, description="sample id: latent = sample_latents(1, seed=sample)")
    photo: str | None = Field(default=None, pattern=PHOTO_ID,
                              description="an id from POST /api/photo: paint that photo instead of a sample")
    units: int = Field(default=20, ge=1, le=MAX_UNITS, description="top-n units per concept")
    strokes: list[StrokeIn] = Field(default_factory=list, max_length=MAX_STROKES)


class EditOut(BaseModel):
    image: str = Field(description="data:image/png;base64,... of the edited image")
    width: int
    height: int
    milliseconds: float = Field(description="server time for this edit (forward pass + encoding)")


class PhotoOut(BaseModel):
    photo: str = Field(description="the id /api/edit takes as 'photo'")
    image: str = Field(description="data:image/png;base64,... of the photo at the generator's resolution")
    psnr: float = Field(description="PSNR (dB) of the generator's own reconstruction of the photo")
    milliseconds: float


class ConceptOut(BaseModel):
    name: str
    category: str
    units: list[int]
    ious: list[float]
    labelled: int
    method: str = Field(description="how units are ranked: iou, or a saved ranking (alpha, ace)")


class InfoOut(BaseModel):
    generator: str
    layer: str
    image_size: list[int]
    grid: list[int]
    units: int
    default_units: int
    max_units: int
    max_strokes: int
    max_mask_side: int
    concepts: list[ConceptOut]
    photo: str | None = Field(default=None, description="the photo opened at start (gdx paint --image), if any")


def decode_mask(mask: MaskIn) -> torch.Tensor:
    """The bit-packed mask as a height x width bool tensor (400 on malformed data)."""
    try:
        raw = base64.b64decode(mask.bits.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise HTTPException(422, "mask.bits is not valid base64") from None
    n = mask.width * mask.height
    if len(raw) != (n + 7) // 8:
        raise HTTPException(
            422, f"mask.bits holds {len(raw)} bytes; a {mask.width}x{mask.height} mask needs {(n + 7) // 8}"
        )
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:n].astype(bool)
    return torch.from_numpy(bits.reshape(mask.height, mask.width))


def encode_png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class _BodyTooLarge(Exception):
    """Private signal inside :class:`BodyLimit` (never leaves this module)."""


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 (by header or while reading)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send, status: int, message: str) -> None:
        body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                if not value.isdigit():
                    await self._refuse(send, 400, "bad Content-Length header")
                    return
                if int(value) > self.max_bytes:
                    await self._refuse(send, 413, f"request body over {self.max_bytes} bytes")
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send, 413, f"request body over {self.max_bytes} bytes")


def _static_text(name: str) -> str:
    return resources.files("gdx.paint").joinpath("static", name).read_text(encoding="utf-8")


#: Host headers the app answers by default: the loopback names. A page on another site
#: that rebinds its DNS name to 127.0.0.1 still sends its own name, and gets 400.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")


def allowed_hosts(host: str | None = None) -> list[str]:
    """The Host header names to accept for a server bound to ``host`` (the loopback names, plus ``host``)."""
    names = list(LOCAL_HOSTS)
    if host and host not in ("0.0.0.0", "::", ""):
        names.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    elif host in ("0.0.0.0", "::"):  # every interface: the machine's own names and addresses
        import socket

        names += [socket.gethostname(), socket.getfqdn()]
        try:
            names += socket.gethostbyname_ex(socket.gethostname())[2]
        except OSError:
            pass
    return list(dict.fromkeys(names))


def create_app(engine: PaintEngine, *, max_body: int = DEFAULT_MAX_BODY, title: str = "gdx paint",
               hosts: list[str] | None = None, photos: Sequence[torch.Tensor] = (),
               invert_options: dict[str, Any] | None = None, model_thread: ModelThread | None = None,
               segmenter: Segmenter | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (run it with uvicorn; see ``gdx paint``).

    ``photos`` (each 1 x 3 x H x W in [-1, 1] at the generator's size) are inverted now and
    opened first; ``invert_options`` are passed to :func:`gdx.invert` for them and for uploads.
    With a ``segmenter`` (the run's), photos are inverted with the engine's concept prior
    (:meth:`PaintEngine.photo_prior`, measured once at the first photo), so that the erase
    brush removes what a photo shows; without one (or with ``prior`` in ``invert_options``)
    as given.

    Only requests whose Host header names one of ``hosts`` (default: the loopback names,
    :func:`allowed_hosts`) are answered (others get 400), against DNS rebinding. The
    interactive API docs are off (they load from a CDN); ``/openapi.json`` describes the API.

    Every torch call (edits, renders, inversions) runs on ``model_thread`` (default: a new
    one); pass the one that built ``engine`` so the process keeps a single OpenMP team
    (:mod:`gdx.paint.worker` says why that halves an edit's time on a small CPU).
    """
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = FastAPI(title=title, version="1", description=__doc__, docs_url=None, redoc_url=None,
                  summary="GANPaint: paint concepts into generated images by editing dissected units.")
    app.add_middleware(BodyLimit, max_bytes=max_body)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts if hosts is not None else allowed_hosts())
    app.state.engine = engine  # what the app serves (tests and embedding tools read it)
    worker = model_thread or ModelThread()
    app.state.model_thread = worker
    generator_name = getattr(engine.generator, "name", type(engine.generator).__name__)
    opened: OrderedDict[str, PaintEngine] = OrderedDict()
    opened_lock = threading.Lock()
    counter = [0]

    priors: list[ConceptPrior] = []

    def open_photo(x: torch.Tensor) -> tuple[str, PaintEngine, float]:
        from gdx.inversion import invert, layer_for_edits

        options = dict(invert_options or {})
        if segmenter is not None and "prior" not in options:
            if not priors:  # measured once, on the model thread like every other torch call
                priors.append(engine.photo_prior(segmenter))
            options["prior"] = priors[0]
        with engine.lock:  # the inversion hooks the shared module, like an edit
            options.setdefault("layer", layer_for_edits(engine.generator, engine.layer))
            inv = invert(engine.generator, x, **options)
        photo_engine = engine.with_generator(inv.as_generator(edit_layer=engine.layer))
        with opened_lock:
            counter[0] += 1
            key = f"p{counter[0]}"
            opened[key] = photo_engine
            while len(opened) > MAX_PHOTOS:
                opened.popitem(last=False)
        return key, photo_engine, float(inv.psnr()[0])

    def photo_engine(key: str) -> PaintEngine:
        with opened_lock:
            found = opened.get(key)
        if found is None:
            raise HTTPException(404, f"no open photo {key!r} (the server keeps the last {MAX_PHOTOS}, in memory "
                                     "only): open the image again")
        return found

    start_photo = None
    for x in photos:
        start_photo = start_photo or worker.call(open_photo, x)[0]
    app.state.photos = opened  # what the app serves (tests read it)

    @lru_cache(maxsize=256)
    def sample_png(sample: int) -> bytes:
        return encode_png(engine.render(sample))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default handler echoes the raw input, which fails on bytes that are not
        # UTF-8 (a 500); report where and what is wrong, never the input itself.
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "invalid")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        return JSONResponse({"detail": errors or "invalid request"}, status_code=422)

    @app.exception_handler(PaintError)
    async def paint_error(_request: Request, exc: PaintError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:  # fixed names only: nothing from a request becomes a path
            raise HTTPException(404, "no such file")
        return Response(_static_text(name), media_type=STATIC[name])

    @app.get("/api/info", response_model=InfoOut, summary="Model, layer and paintable concepts")
    def info() -> InfoOut:
        return InfoOut(
            generator=str(generator_name), layer=engine.layer, image_size=list(engine.image_size),
            grid=list(engine.grid), units=engine.dissection.units, default_units=engine.default_units,
            max_units=MAX_UNITS, max_strokes=MAX_STROKES, max_mask_side=MAX_MASK_SIDE,
            concepts=[ConceptOut(name=c.name, category=c.category, units=list(c.units), ious=list(c.ious),
                                 labelled=c.labelled, method=c.method) for c in engine.concepts.values()],
            photo=start_photo,
        )

    @app.get("/api/sample/{sample}.png", summary="An unedited sample as PNG",
             responses={200: {"content": {"image/png": {}}}})
    async def sample(sample: Annotated[int, PathParam(ge=0, le=MAX_SAMPLE)]) -> Response:
        return Response(await worker.run(sample_png, sample), media_type="image/png",
                        headers={"Cache-Control": "public, max-age=3600"})

    @app.post("/api/edit", response_model=EditOut, summary="Apply strokes to a sample (one generator forward)")
    async def edit(request: EditIn) -> EditOut:
        return await worker.run(edit_now, request, time.perf_counter())

    def edit_now(request: EditIn, started: float) -> EditOut:
        strokes = [Stroke(s.concept, s.mode, decode_mask(s.mask)) for s in request.strokes]
        for s in strokes:
            if s.concept not in engine.concepts:
                raise HTTPException(422, f"unknown concept {s.concept!r}; paintable: {', '.join(engine.concepts)}")
        if request.photo is not None:
            rgb = photo_engine(request.photo).render(0, strokes, n_units=request.units)
        else:
            rgb = engine.render(request.sample, strokes, n_units=request.units)
        png = encode_png(rgb)
        return EditOut(image="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                       width=int(rgb.shape[1]), height=int(rgb.shape[0]),
                       milliseconds=round((time.perf_counter() - started) * 1000, 2))

    @app.post("/api/photo", response_model=PhotoOut, summary="Open a PNG/JPEG photo (raw body) for painting",
              openapi_extra={"requestBody": {"required": True, "content": {t: {"schema": {"type": "string",
                             "format": "binary"}} for t in FORMATS.values()}}},
              responses={413: {"description": "body too large"}, 415: {"description": "not a PNG or JPEG"},
                         422: {"description": "damaged, too large or too thin an image"}})
    async def photo(request: Request) -> PhotoOut:
        started = time.perf_counter()
        declared = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if declared not in FORMATS.values():
            raise HTTPException(415, f"Content-Type {declared or '(none)'!r} is not accepted: send the image as the "
                                     "raw body with Content-Type image/png or image/jpeg")
        data = await request.body()
        found = sniff_format(data)
        if found != declared:
            raise HTTPException(415, f"the body is {'a ' + found + ' file' if found else 'not a PNG or JPEG file'} but "
                                     f"Content-Type says {declared}: send a PNG or JPEG with its own type")
        try:
            x = await worker.run(read_image, data, size=engine.image_size)
        except PhotoError as exc:
            raise HTTPException(422, str(exc)) from None
        key, painted, psnr = await worker.run(open_photo, x)
        png = encode_png(await worker.run(painted.render, 0))
        return PhotoOut(photo=key, image="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                        psnr=round(psnr, 2), milliseconds=round((time.perf_counter() - started) * 1000, 2))

    @app.get("/api/photo/{key}.png", summary="An opened photo, unedited", responses={200: {"content": {"image/png": {}}}})
    async def photo_png(key: Annotated[str, PathParam(pattern=PHOTO_ID)]) -> Response:
        painted = photo_engine(key)
        return Response(encode_png(await worker.run(painted.render, 0)), media_type="image/png")

    return app
