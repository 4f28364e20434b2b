"""Read user images safely: PNG or JPEG only, sizes checked before any pixel is decoded.

Photos come from users (``gdx invert`` files, GANPaint uploads), so a file is treated as
hostile: its format is read from its bytes (not its name or a header), its dimensions
from its header *before* decoding, and decoding happens with Pillow's own decompression
bomb limit lowered to :data:`MAX_PIXELS`. Errors are :class:`PhotoError` with a message
that says what is wrong and what is accepted.

>>> x = read_image(Path("photo.jpg").read_bytes(), size=(64, 64))   # 1 x 3 x 64 x 64 in [-1, 1]
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from gdx.errors import PhotoError

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}
#: Largest accepted side and pixel count (a 12-megapixel phone photo fits; a bomb does not).
MAX_SIDE = 8192
MAX_PIXELS = 40_000_000
#: Widest accepted aspect ratio (a 1 x 100000 strip is not a photo).
MAX_ASPECT = 8.0


def read_image(data: bytes, *, size: tuple[int, int]) -> torch.Tensor:
    """Decode PNG/JPEG ``data`` and return it as 1 x 3 x size[0] x size[1] RGB in [-1, 1].

    The image is centre-cropped to the target's aspect ratio, then resized (Lanczos), so a
    photo is never stretched. Raises :class:`PhotoError` for anything else.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise PhotoError("the file is empty; send a PNG or JPEG image")
    fmt, w, h = "", 0, 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(FORMATS))
            img.MAX_IMAGE_PIXELS = MAX_PIXELS  # type: ignore[attr-defined]
            fmt = str(img.format)
            w, h = img.size
            check_dimensions(w, h)
            img.load()
    except PhotoError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PhotoError("not a PNG or JPEG image (or one too large to decode safely); send a PNG or JPEG") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise PhotoError(f"the {FORMATS.get(fmt, 'image')} file is damaged or truncated ({str(exc)[:120]})") from None
    rgb = img.convert("RGB")
    th, tw = int(size[0]), int(size[1])
    scale = min(w / tw, h / th)
    cw, ch = tw * scale, th * scale
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    rgb = rgb.resize((tw, th), Image.Resampling.LANCZOS, box=box)
    arr = np.asarray(rgb, dtype=np.float32)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None] / 127.5 - 1


def check_dimensions(width: int, height: int) -> None:
    """Refuse images too large or too thin to be a photo (before their pixels are decoded)."""
    if width < 1 or height < 1:
        raise PhotoError(f"the image is {width} x {height} pixels; it has no pixels")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise PhotoError(f"the image is {width} x {height} pixels; the limit is {MAX_SIDE} per side and "
                         f"{MAX_PIXELS // 1_000_000} megapixels: make it smaller")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise PhotoError(f"the image is {width} x {height} pixels; sides may differ by at most {MAX_ASPECT:g}x: crop it")


def sniff_format(data: bytes) -> str | None:
    """``"image/png"`` or ``"image/jpeg"`` from the first bytes, else None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    return None
