"""zarr chunks that are one compressed image each: Diffusion Policy's ``Jpeg2k`` and UMI's ``JpegXl``.

Diffusion Policy caches image datasets, and UMI ships its datasets, as zarr arrays of uint8
images ``(T, H, W[, C])`` chunked one image per chunk, each chunk an image file written by
``imagecodecs`` (compressor ids ``imagecodecs_jpeg2k`` and ``imagecodecs_jpegxl``, from their
``imagecodecs_numcodecs`` modules). cadence decodes them with ``imagecodecs`` itself, its own
classes registered under those ids (the writers' own code is never imported), and only into the
chunk's image:

- JPEG 2000: the image's size, components, bit depth and tiles are read from the codestream's
  SIZ marker (inside the JP2 boxes, if any) here, and its code-block and precinct sizes from the
  COD / COC markers of every header, before OpenJPEG sees the data (it decodes the whole image
  a header claims before anything can compare it: a 2.6 kB file claiming 6000x6000 took 460 MB;
  2x2 precincts of 4x4 code-blocks cost it 550 bytes a pixel). OpenJPEG is given the codestream
  alone: a JP2 palette box made it build 255 components out of one;
- JPEG XL: libjxl reads the header first and imagecodecs refuses an image of another shape
  than the chunk's before decoding (checked: a header claiming 6000x6000 costs nothing).

Either way an image of another size or channel count, or not 8-bit, is refused naming the array.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_bytes, ndarray_copy
from numcodecs.registry import codec_registry, register_codec

JPEG2K, JPEGXL = "imagecodecs_jpeg2k", "imagecodecs_jpegxl"
IMAGE_CODECS = (JPEG2K, JPEGXL)
MAX_TILES = 4096                 # OpenJPEG allocates a few kB per tile when it reads the header
MAX_TILE_PARTS = 4 * MAX_TILES
MAX_MARKERS = 1024               # marker segments in one header
PIXELS_PER_PARTITION = 16        # precincts + code-blocks per component: at most pixels / 16 + FREE_PARTITIONS
FREE_PARTITIONS = 4096           # (encoders write 64x64 code-blocks: a few per 4096 pixels; OpenJPEG keeps ~700 bytes each)
SOT, SOD, EOC, COD, COC = b"\xff\x90", b"\xff\x93", b"\xff\xd9", b"\xff\x52", b"\xff\x53"
# The header markers OpenJPEG reads by their length: CAP SIZ COD COC TLM PLM PLT CPF QCD QCC RGN
# POC PPM PPT CRG COM MCT MCC MCO CBD
HEADER_MARKERS = frozenset(bytes([0xFF, m]) for m in (0x50, 0x51, 0x52, 0x53, 0x55, 0x57, 0x58, 0x59, 0x5C, 0x5D,
                                                      0x5E, 0x5F, 0x60, 0x61, 0x63, 0x64, 0x74, 0x75, 0x77, 0x78))
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_MAX_BOXES = 256


class ImageChunkError(ValueError):
    """A chunk that is not the one image its array declares."""


def image_shape(chunks: tuple[int, ...]) -> tuple[int, ...] | None:
    """The image one chunk holds, or None where the chunks are not one uint8 image each:
    ``(1, H, W)`` -> ``(H, W)``, ``(1, H, W, C)`` with C <= 4 -> ``(H, W, C)``."""
    if len(chunks) not in (3, 4) or chunks[0] != 1 or (len(chunks) == 4 and not 1 <= chunks[3] <= 4):
        return None
    return tuple(chunks[1:])


def jpeg2k_size(data: bytes) -> tuple[int, int, int]:
    """(height, width, components) of a JPEG 2000 file (JP2 or a bare codestream), once its
    codestream has passed :func:`jpeg2k_codestream`'s checks."""
    return jpeg2k_codestream(data)[1]


def jpeg2k_codestream(data: bytes) -> tuple[bytes, tuple[int, int, int]]:
    """The codestream of a JPEG 2000 file and its (height, width, components), read from its SIZ
    marker; refuses what is not 8-bit unsigned, subsampled, in more than :data:`MAX_TILES` tiles,
    or coded in so many precincts and code-blocks that the decoder's bookkeeping outgrows the
    image (COD / COC markers of the main header and of every tile-part: 4x4 code-blocks in 2x2
    precincts cost OpenJPEG about 550 bytes a pixel)."""
    stream = _codestream(data)
    if stream[:4] != b"\xff\x4f\xff\x51" or len(stream) < 42:
        raise ImageChunkError("not a JPEG 2000 codestream (no SOC + SIZ markers)")
    (_, _, xsiz, ysiz, xo, yo, xt, yt, xto, yto, components) = struct.unpack_from(">HHIIIIIIIIH", stream, 4)
    width, height = xsiz - xo, ysiz - yo
    if width <= 0 or height <= 0 or xt == 0 or yt == 0 or xto > xo or yto > yo:
        raise ImageChunkError(f"a JPEG 2000 header with an empty image or tiles ({xsiz}x{ysiz} at {xo},{yo})")
    tiles = math.ceil((xsiz - xto) / xt) * math.ceil((ysiz - yto) / yt)
    if tiles > MAX_TILES:
        raise ImageChunkError(f"a JPEG 2000 image in {tiles:,} tiles (at most {MAX_TILES})")
    if not 1 <= components <= 4 or len(stream) < 42 + 3 * components:
        raise ImageChunkError(f"a JPEG 2000 image of {components} components (1 to 4 read here)")
    for c in range(components):
        depth, dx, dy = struct.unpack_from(">BBB", stream, 42 + 3 * c)
        if depth != 7 or dx != 1 or dy != 1:      # Ssiz 7: 8-bit unsigned
            raise ImageChunkError(f"a JPEG 2000 component {c} of {(depth & 0x7F) + 1} bits"
                                  f"{' signed' if depth & 0x80 else ''}, subsampled {dx}x{dy} "
                                  "(8-bit unsigned, full size read here)")
    _check_coding(stream, 2, _Grid(min(xt, xsiz - xto), min(yt, ysiz - yto), tiles))
    return stream, (height, width, components)


@dataclass(frozen=True)
class _Grid:
    """What the coding style's partitions are counted over (per component): the tiles."""
    tile_w: int
    tile_h: int
    tiles: int

    @property
    def allowed(self) -> int:
        return self.tiles * self.tile_w * self.tile_h // PIXELS_PER_PARTITION + FREE_PARTITIONS


def _check_coding(stream: bytes, at: int, grid: _Grid) -> None:
    """The main header from ``at`` and every tile-part's header: only markers OpenJPEG reads by
    their length (it scans an unknown one for the next marker it knows: a COD hidden in one went
    unchecked), and their coding styles (COD, COC) and quality layers within bounds."""
    at, main = _header(stream, at, grid, (1, 1))
    for _ in range(MAX_TILE_PARTS):
        if at + 2 > len(stream) or stream[at:at + 2] == EOC:
            return
        if at + 12 > len(stream) or stream[at:at + 2] != SOT:
            raise ImageChunkError(f"a JPEG 2000 codestream with marker {stream[at:at + 2].hex()} where a tile-part "
                                  "starts")
        length = struct.unpack_from(">I", stream, at + 6)[0]        # Psot: 0 = up to the end
        _header(stream, at + 12, grid, main)
        if length == 0:
            return
        if length < 14:
            raise ImageChunkError(f"a JPEG 2000 tile-part of {length} bytes")
        at += length
    raise ImageChunkError(f"a JPEG 2000 codestream of more than {MAX_TILE_PARTS:,} tile-parts")


def _header(stream: bytes, at: int, grid: _Grid, defaults: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """Checks the marker segments from ``at`` up to the next SOT or SOD; returns where that is and
    the header's (quality layers, precincts per tile and component), ``defaults`` where it sets none."""
    layers, precincts = defaults
    for _ in range(MAX_MARKERS):
        if at + 4 > len(stream) or stream[at:at + 2] in (SOT, SOD):
            if layers * precincts * grid.tiles > grid.allowed:      # OpenJPEG visits every packet
                raise ImageChunkError(f"a JPEG 2000 image of {layers:,} quality layers over {precincts * grid.tiles:,} "
                                      f"precincts per component, more packets than {grid.allowed:,} for its size")
            return at, (layers, precincts)
        marker, length = stream[at:at + 2], struct.unpack_from(">H", stream, at + 2)[0]
        if marker not in HEADER_MARKERS:
            raise ImageChunkError(f"a JPEG 2000 header with marker {marker.hex()} (not one read here)")
        segment = stream[at + 4: at + 2 + length]
        if length < 2 or len(segment) != length - 2:
            raise ImageChunkError("a JPEG 2000 marker segment past the end of the data")
        if marker == COD:
            if len(segment) < 5:
                raise ImageChunkError("a JPEG 2000 coding style marker too short")
            layers = struct.unpack_from(">H", segment, 2)[0]
            precincts = max(precincts, _check_style(segment[0], segment[5:], grid))
        elif marker == COC:
            precincts = max(precincts, _check_style(segment[1], segment[2:], grid))   # Ccoc: one byte (<= 4 components)
        at += 2 + length
    raise ImageChunkError(f"a JPEG 2000 header of more than {MAX_MARKERS} markers")


def _check_style(scod: int, spcod: bytes, grid: _Grid) -> int:
    """SPcod / SPcoc: the precincts and code-blocks their sizes make, counted over every
    resolution of every tile, within :attr:`_Grid.allowed` per component; returns the precincts
    of one tile and component."""
    if len(spcod) < 5:
        raise ImageChunkError("a JPEG 2000 coding style marker too short")
    levels, xcb, ycb = spcod[0], spcod[1] + 2, spcod[2] + 2
    if levels > 32:
        raise ImageChunkError(f"a JPEG 2000 image over {levels} decomposition levels (at most 32)")
    sizes = [(b & 0xF, b >> 4) for b in spcod[5: 5 + levels + 1]] if scod & 1 else [(15, 15)] * (levels + 1)
    if len(sizes) != levels + 1:
        raise ImageChunkError("a JPEG 2000 coding style marker too short for its precinct sizes")
    precincts = blocks = 0
    for r, (ppx, ppy) in enumerate(sizes):
        w, h = math.ceil(grid.tile_w / 2 ** (levels - r)), math.ceil(grid.tile_h / 2 ** (levels - r))
        precincts += math.ceil(w / 2 ** ppx) * math.ceil(h / 2 ** ppy)
        band_w, band_h = (w, h) if r == 0 else (math.ceil(w / 2), math.ceil(h / 2))
        block_w, block_h = min(xcb, ppx - (r > 0)), min(ycb, ppy - (r > 0))        # code-blocks fit the precincts
        blocks += (1 if r == 0 else 3) * math.ceil(band_w / 2 ** max(block_w, 0)) * math.ceil(band_h / 2 ** max(block_h, 0))
    if (precincts + blocks) * grid.tiles > grid.allowed:
        raise ImageChunkError(f"a JPEG 2000 image coded in {(precincts + blocks) * grid.tiles:,} precincts and "
                              f"code-blocks per component, more than {grid.allowed:,} for its size ({2 ** xcb}x{2 ** ycb} "
                              f"code-blocks, precincts down to {2 ** min(min(p) for p in sizes)})")
    return precincts


def _codestream(data: bytes) -> bytes:
    """The codestream of a JP2 file (its ``jp2c`` box), or ``data`` itself if it is one."""
    if not data.startswith(_JP2_SIGNATURE):
        return data
    at = len(_JP2_SIGNATURE)
    for _ in range(_MAX_BOXES):
        if at + 8 > len(data):
            break
        length, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if length == 1:
            if at + 16 > len(data):
                break
            length, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif length == 0:
            length = len(data) - at
        if length < header:
            break
        if kind == b"jp2c":
            return data[at + header: at + length]
        at += length
    raise ImageChunkError("a JP2 file without a codestream box")


class ImageChunk(Codec):
    """Decodes a chunk of one image (``codec_id`` one of :data:`IMAGE_CODECS`) into exactly the
    chunk's image; refuses anything else before the decoder allocates it."""

    def __init__(self, codec_id: str, chunks: tuple[int, ...]):
        shape = image_shape(chunks)
        if codec_id not in IMAGE_CODECS or shape is None:
            raise ImageChunkError(f"{codec_id} chunks of shape {chunks}: not one image each")
        self.codec_id, self.chunks, self.shape = codec_id, chunks, shape

    def decode(self, buf, out=None):
        import imagecodecs

        data = ensure_bytes(buf)
        height, width = self.shape[:2]
        channels = self.shape[2] if len(self.shape) == 3 else 1
        image = np.zeros((height, width, channels) if channels > 1 else (height, width), np.uint8)
        if self.codec_id == JPEG2K:
            stream, size = jpeg2k_codestream(data)
            if size != (height, width, channels):
                raise ImageChunkError(f"a {size[1]}x{size[0]} JPEG 2000 image of {size[2]} components in a "
                                      f"chunk of {width}x{height}x{channels}")
            # the codestream alone: a JP2 file's palette or channel boxes would make OpenJPEG build
            # more components than SIZ declares
            imagecodecs.jpeg2k_decode(stream, out=image, numthreads=1)
        else:
            try:
                imagecodecs.jpegxl_decode(data, out=image, numthreads=1)
            except ValueError as exc:     # imagecodecs compares the header's shape with out's first
                raise ImageChunkError(f"a JPEG XL image not of the chunk's shape {self.shape} ({exc})") from None
        return ndarray_copy(image.reshape(self.chunks), out)

    def encode(self, buf):
        raise ImageChunkError("cadence reads image chunks; it does not write them")

    def get_config(self):
        return {"id": self.codec_id}


class _Registered(Codec):
    """What numcodecs' registry builds from a ``.zarray`` naming an image codec (any settings):
    zarr needs it to open the array; :func:`cadence.datasets.zarr_checks.bounded` then puts an
    :class:`ImageChunk` in its place before any chunk is read, so this never decodes."""

    def __init__(self, **config):
        self.config = config

    def decode(self, buf, out=None):
        raise ImageChunkError(f"{self.codec_id} chunks are decoded only through an array opened by cadence")

    def encode(self, buf):
        raise ImageChunkError("cadence reads image chunks; it does not write them")

    def get_config(self):
        return {"id": self.codec_id, **self.config}


def register() -> None:
    """Register the image codecs' ids with numcodecs, unless something else (the writers' own
    classes, in a process that imported them) already did: those are replaced by
    :class:`ImageChunk` too before any chunk is read."""
    for codec_id in IMAGE_CODECS:
        if codec_id not in codec_registry:
            register_codec(type(f"_Registered_{codec_id}", (_Registered,), {"codec_id": codec_id}))
