"""Stores as Diffusion Policy and UMI write them: zarr arrays of uint8 images, one image per chunk,
each chunk a JPEG 2000 / JPEG XL file from imagecodecs, in a directory or a ``.zarr.zip``."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import imagecodecs
import numpy as np
import zarr
from numcodecs.abc import Codec
from numcodecs.registry import codec_registry, register_codec


class _Writer(Codec):
    """What the writers' ``imagecodecs_numcodecs`` classes do to a chunk (lossless here, so that
    what is read back can be compared exactly): the image, squeezed, through imagecodecs."""

    def __init__(self, **config):
        self.config = config

    def get_config(self):
        return {"id": self.codec_id, **self.config}

    def decode(self, buf, out=None):
        raise AssertionError("cadence must decode through its own codec")


class Jpeg2kWriter(_Writer):
    codec_id = "imagecodecs_jpeg2k"

    def encode(self, buf):
        return imagecodecs.jpeg2k_encode(np.squeeze(np.asarray(buf), 0), level=0, reversible=True)


class JpegXlWriter(_Writer):
    codec_id = "imagecodecs_jpegxl"

    def encode(self, buf):
        return imagecodecs.jpegxl_encode(np.squeeze(np.asarray(buf), 0), lossless=True)


WRITERS = {"jpeg2k": Jpeg2kWriter, "jpegxl": JpegXlWriter}


@contextmanager
def writers_registered():
    """The writers' classes registered while a store is written (zarr looks the id up), then the
    registry as it was."""
    saved = {w.codec_id: codec_registry.get(w.codec_id) for w in WRITERS.values()}
    for writer in WRITERS.values():
        register_codec(writer)
    try:
        yield
    finally:
        for codec_id, previous in saved.items():
            if previous is None:
                codec_registry.pop(codec_id, None)
            else:
                codec_registry[codec_id] = previous


def image_store(path: Path, codec: str = "jpeg2k", episodes=(4, 6), image=(24, 32, 3), seed=0) -> dict:
    """A ReplayBuffer store at ``path`` (a directory, or a zip if it ends in ``.zip``) with
    ``data/img`` (compressed images), ``data/state`` and ``data/action``; returns what it holds."""
    rng = np.random.default_rng(seed)
    steps = sum(episodes)
    values = {"img": rng.integers(0, 256, (steps, *image), dtype=np.uint8),
              "state": rng.standard_normal((steps, 3)).astype(np.float32),
              "action": rng.standard_normal((steps, 2)).astype(np.float32)}
    store = zarr.ZipStore(str(path), mode="w") if path.suffix == ".zip" else zarr.DirectoryStore(str(path))
    with writers_registered():
        root = zarr.group(store)
        data, meta = root.create_group("data"), root.create_group("meta")
        data.array("img", values["img"], chunks=(1, *image), compressor=WRITERS[codec]())
        data.array("state", values["state"])
        data.array("action", values["action"])
        meta.array("episode_ends", np.cumsum(episodes))
    if path.suffix == ".zip":
        store.close()
    return values
