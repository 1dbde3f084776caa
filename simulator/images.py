"""Deterministic PNG results: derived from a data-URL reference or drawn from a hash."""

import asyncio
import functools
import hashlib
import io
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps
from starlette.concurrency import run_in_threadpool

ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1280, 720),
    "4:3": (1152, 864),
    "3:2": (1248, 832),
    "2:3": (832, 1248),
    "3:4": (864, 1152),
    "9:16": (720, 1280),
    "21:9": (1344, 576),
}
_CAPTION_CHARS = 48
_TINT_ALPHA = 0.35

FontType = ImageFont.ImageFont | ImageFont.FreeTypeFont | ImageFont.TransposedFont


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """Everything that determines one output image's pixels."""

    prompt: str
    seed: int
    width: int
    height: int
    index: int
    reference_key: str


def render_png(spec: ImageSpec, reference: bytes | None) -> bytes:
    """Render one image as PNG bytes; identical specs give identical bytes."""
    digest = hashlib.blake2b(repr(spec).encode("utf-8"), digest_size=64).digest()
    size = (spec.width, spec.height)
    image = _from_reference(reference, size, digest) if reference is not None else None
    if image is None:
        image = _gradient(size, digest)
    _caption(image, f"#{spec.index} {spec.prompt}")
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _from_reference(reference: bytes, size: tuple[int, int], digest: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(reference)) as source:
            # draft() lets JPEG decode at a reduced scale: much faster for big photos.
            source.draft("RGB", size)
            fitted = ImageOps.fit(source.convert("RGB"), size, Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError):
        # A reference with valid magic bytes but a broken body still yields an image.
        return None
    tint = Image.new("RGB", size, (digest[0], digest[1], digest[2]))
    return Image.blend(fitted, tint, _TINT_ALPHA)


def _gradient(size: tuple[int, int], digest: bytes) -> Image.Image:
    # Upscaling a 4x4 grid of hash-derived colours gives a smooth, cheap, unique field.
    grid = Image.frombytes("RGB", (4, 4), digest[:48])
    return grid.resize(size, Image.Resampling.BICUBIC)


def _caption(image: Image.Image, text: str) -> None:
    font_size = max(12, image.height // 40)
    font = _font(font_size)
    text = text[:_CAPTION_CHARS].encode("ascii", "replace").decode("ascii")
    band = int(font_size * 1.8)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, image.height - band, image.width, image.height), fill=(0, 0, 0))
    draw.text(
        (font_size // 2, image.height - band + font_size // 3),
        text,
        fill=(255, 255, 255),
        font=font,
    )


@functools.cache
def _font(size: int) -> FontType:
    return ImageFont.load_default(size=size)


class ImageCache:
    """Bounded LRU of rendered PNGs; renders run in a worker thread, once per spec."""

    def __init__(self, capacity: int = 32) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[ImageSpec, bytes] = OrderedDict()
        self._inflight: dict[ImageSpec, asyncio.Future[bytes]] = {}
        self.renders = 0

    async def get(self, spec: ImageSpec, reference: bytes | None) -> bytes:
        """Return the PNG for spec, rendering it off the event loop on a miss."""
        cached = self._entries.get(spec)
        if cached is not None:
            self._entries.move_to_end(spec)
            return cached
        render = self._inflight.get(spec)
        if render is None:
            render = asyncio.ensure_future(self._render(spec, reference))
            self._inflight[spec] = render
        # shield: a downloader that disconnects must not cancel the render for the others.
        return await asyncio.shield(render)

    async def _render(self, spec: ImageSpec, reference: bytes | None) -> bytes:
        try:
            data = await run_in_threadpool(render_png, spec, reference)
        finally:
            self._inflight.pop(spec, None)
        self.renders += 1
        self._entries[spec] = data
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return data

    def clear(self) -> None:
        """Drop every cached image."""
        self._entries.clear()
