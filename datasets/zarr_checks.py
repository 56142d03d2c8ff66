"""Checks on a zarr v2 store written elsewhere, made before zarr reads any of it.

zarr does what a ``.zarray`` says: an object dtype with a pickle codec unpickles its chunks
(runs code), a shape of 1e12 rows or chunks of 1e9 elements are allocated as claimed, and a
chunk whose compressed header claims 2 GiB is decompressed into a buffer that large. So an
array is opened only after :func:`check_array` has read its ``.zarray`` with the bounded JSON
reader and found a plain numeric array (dtype ``b1``, ``i1``..``i8``, ``u1``..``u8``,
``f2``..``f8``; no filters; no compressor, one of ``blosc``, ``zstd``, ``lz4``, which record
the decoded size, a stream codec (``zlib``, ``gzip``, ``bz2``, ``lzma``) inflated here with a
cap of one chunk, or, for uint8 images one per chunk, ``imagecodecs_jpeg2k`` /
``imagecodecs_jpegxl`` (:mod:`.image_chunks`)) with shape and chunks within ``LIMITS``, and
:func:`check_chunks` has found every chunk holding committed rows, as a regular file no larger
than a chunk can compress to. Once open (:func:`bounded`), a chunk is always decoded into a
buffer of one chunk's size, so a header claiming more is refused instead of allocated, and
:func:`reading` turns whatever zarr or a codec raises on a corrupt chunk into one
:class:`~cadence.untrusted.UntrustedFileError` naming the array.

The store's files are read through :mod:`.store_files`: a directory, or a zip of one.
"""
from __future__ import annotations

import bz2
import lzma
import math
import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import zarr
from numcodecs.abc import Codec
from numcodecs.compat import ensure_bytes, ndarray_copy

from cadence.untrusted import LIMITS, UntrustedFileError, check_int

from . import image_chunks
from .image_chunks import IMAGE_CODECS, ImageChunk, image_shape
from .store_files import DirectoryFiles, ZipFiles

image_chunks.register()
Files = DirectoryFiles | ZipFiles

DTYPE = re.compile(r"[<>|]?(b1|[iu][1248]|f[248])")
# Stream codecs are decoded here, never past one chunk's size (numcodecs would inflate them whole).
_STREAMS = {"zlib": zlib.decompressobj, "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
            "bz2": bz2.BZ2Decompressor, "lzma": lzma.LZMADecompressor}
COMPRESSORS = ("blosc", "zstd", "lz4", *_STREAMS, *IMAGE_CODECS)
REQUIRED = ("zarr_format", "shape", "chunks", "dtype", "compressor", "fill_value", "order", "filters")


@dataclass(frozen=True)
class ArrayMeta:
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    separator: str
    compressor: str | None = None

    @property
    def chunk_bytes(self) -> int:
        return math.prod(self.chunks) * int(self.dtype[-1])

    def describes(self, array: zarr.Array) -> bool:
        """Whether the array zarr opened is the one these checks read (the same metadata; its
        length may have grown since, by an append)."""
        compressor = array.compressor.codec_id if array.compressor is not None else None
        return (tuple(array.shape[1:]) == self.shape[1:] and tuple(array.chunks) == self.chunks
                and array.dtype == np.dtype(self.dtype) and compressor == self.compressor and not array.filters)


def check_group(files: Files, key: str) -> None:
    """``key/.zgroup`` is a bounded JSON object with ``zarr_format`` 2."""
    where = files.where(_join(key, ".zgroup"))
    meta = files.json(_join(key, ".zgroup"))
    if not isinstance(meta, dict) or meta.get("zarr_format") != 2:
        raise UntrustedFileError(f"{where}: 'zarr_format' must be 2 (a zarr v2 group), got {str(meta)[:100]}")


def check_array(files: Files, key: str, max_rows: int) -> ArrayMeta:
    """The checked ``.zarray`` of the array ``key``: at most ``max_rows`` rows of a per-step
    shape within ``LIMITS``, in chunks of at most ``LIMITS["chunk_bytes"]``."""
    where = files.where(_join(key, ".zarray"))
    meta = files.json(_join(key, ".zarray"))
    if not isinstance(meta, dict):
        raise UntrustedFileError(f"{where}: expected a JSON object")

    def fail(key: str, what: str) -> UntrustedFileError:
        return UntrustedFileError(f"{where}: '{key}' {what}, got {meta.get(key)!r}"[:300])

    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise UntrustedFileError(f"{where}: '{missing[0]}' is missing")
    if meta.get("zarr_format") != 2:
        raise fail("zarr_format", "must be 2")
    dtype = meta.get("dtype")
    if not isinstance(dtype, str) or not DTYPE.fullmatch(dtype):
        raise fail("dtype", "must be a plain numeric type (b1, i1-i8, u1-u8, f2-f8)")
    shape, chunks = meta.get("shape"), meta.get("chunks")
    if not isinstance(shape, list) or not 1 <= len(shape) <= LIMITS["dims"] + 1:
        raise fail("shape", f"must be a list of 1 to {LIMITS['dims'] + 1} sizes")
    if not isinstance(chunks, list) or len(chunks) != len(shape):
        raise fail("chunks", "must be a list of one size per dimension of 'shape'")
    shape = [check_int(where, "shape[0]", shape[0], 0, max_rows),
             *(check_int(where, f"shape[{i}]", d, 1, LIMITS["obs_elements"]) for i, d in enumerate(shape) if i)]
    if math.prod(shape[1:]) > LIMITS["obs_elements"]:
        raise fail("shape", f"has more than {LIMITS['obs_elements']:,} elements per step")
    chunks = [check_int(where, f"chunks[{i}]", c, 1, LIMITS["chunk_bytes"]) for i, c in enumerate(chunks)]
    compressor = meta.get("compressor")
    checked = ArrayMeta(tuple(shape), tuple(chunks), dtype, meta.get("dimension_separator", "."),
                        compressor.get("id") if isinstance(compressor, dict) else None)
    if checked.chunk_bytes > LIMITS["chunk_bytes"]:
        raise fail("chunks", f"make chunks of {checked.chunk_bytes:,} bytes, more than {LIMITS['chunk_bytes']:,}")
    if compressor is not None and (not isinstance(compressor, dict) or compressor.get("id") not in COMPRESSORS):
        raise fail("compressor", f"must be null or one of {list(COMPRESSORS)}")
    if checked.compressor in IMAGE_CODECS and (dtype[-2:] != "u1" or image_shape(checked.chunks) is None
                                               or checked.chunks[1:] != checked.shape[1:]):
        raise fail("chunks", f"with {checked.compressor} must be one uint8 image each, (1, H, W) or (1, H, W, C) "
                   f"with C <= 4, of the array's per-step shape {list(checked.shape[1:])} (dtype {dtype})")
    if checked.compressor in IMAGE_CODECS and meta.get("order") != "C":
        raise fail("order", f"with {checked.compressor} must be 'C' (an image is stored row by row)")
    if meta.get("filters") not in (None, []):
        raise fail("filters", "must be null (cadence reads no filters)")
    fill = meta["fill_value"]
    if not (fill is None or isinstance(fill, (int, float)) or fill in ("NaN", "Infinity", "-Infinity")):
        raise fail("fill_value", "must be null, a number, 'NaN' or '(-)Infinity'")
    if meta.get("order") not in ("C", "F"):
        raise fail("order", "must be 'C' or 'F'")
    if checked.separator not in (".", "/"):
        raise fail("dimension_separator", "must be '.' or '/'")
    return checked


def check_chunks(files: Files, key: str, meta: ArrayMeta, rows: int) -> None:
    """Every chunk holding one of the first ``rows`` rows is a regular file under ``key`` no
    larger than a chunk compresses to (a missing one would be read as fill values: memory
    that no data on disk backs)."""
    grid = (math.ceil(rows / meta.chunks[0]), *(math.ceil(s / c) for s, c in zip(meta.shape[1:], meta.chunks[1:])))
    needed = math.prod(grid)
    largest = meta.chunk_bytes + meta.chunk_bytes // 64 + 1024      # any of the codecs' worst case
    if meta.compressor in IMAGE_CODECS:         # an image file's headers and a lossless noisy image's growth
        largest = 2 * meta.chunk_bytes + 65536
    seen: set[tuple[str, ...]] = set()
    for parts, size, regular in files.members(key):
        index = parts if meta.separator == "/" else tuple(parts[0].split(".")) if len(parts) == 1 else ()
        if len(index) != len(grid) or not all(          # zarr's own names only: "0", never "00"
                i.isascii() and i.isdigit() and str(int(i)) == i and int(i) < g for i, g in zip(index, grid)):
            continue
        if not regular or size > largest:
            raise UntrustedFileError(f"{files.where(_join(key, *parts))}: not a chunk file (a chunk is a regular "
                                     f"file, not a link, of at most {largest:,} bytes here)")
        seen.add(tuple(index))
    found = len(seen)
    if found < needed:
        raise UntrustedFileError(f"{files.where(key)}: {needed - found} of the {needed} chunks holding its first "
                                 f"{rows} rows are missing")


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


class _IntoChunk(Codec):
    """A compressor that decodes every chunk into a buffer of one chunk's size."""

    def __init__(self, codec: Codec, nbytes: int):
        self.codec, self.nbytes, self.codec_id = codec, nbytes, codec.codec_id

    def encode(self, buf):
        return self.codec.encode(buf)

    def decode(self, buf, out=None):
        if self.codec_id not in _STREAMS:
            return self.codec.decode(buf, np.zeros(self.nbytes, np.uint8) if out is None else out)
        data = _STREAMS[self.codec_id]().decompress(ensure_bytes(buf), self.nbytes + 1)
        if len(data) > self.nbytes:
            raise ValueError(f"a {self.codec_id} chunk inflates to more than a chunk's {self.nbytes:,} bytes")
        return ndarray_copy(np.frombuffer(data, np.uint8), out)

    def get_config(self):
        return self.codec.get_config()


def bounded(array: zarr.Array) -> zarr.Array:
    """``array`` with its compressor decoding only into chunk-sized buffers (an image codec: only
    into the chunk's image, :class:`~.image_chunks.ImageChunk`)."""
    if array.compressor is not None and array.compressor.codec_id in IMAGE_CODECS:
        array._compressor = ImageChunk(array.compressor.codec_id, tuple(array.chunks))
    elif array.compressor is not None:
        array._compressor = _IntoChunk(array.compressor, math.prod(array.chunks) * array.dtype.itemsize)
    return array


@contextmanager
def reading(where) -> Iterator[None]:
    """Errors zarr or a codec raise on corrupt data, as one line naming ``where``."""
    try:
        yield
    except (UntrustedFileError, MemoryError):
        raise
    except Exception as exc:      # zarr and the codecs raise many types for a corrupt chunk
        raise UntrustedFileError(f"{where}: cannot read ({type(exc).__name__}: {exc})"[:400]) from None
