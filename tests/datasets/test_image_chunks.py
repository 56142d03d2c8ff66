"""Image chunks (Diffusion Policy's Jpeg2k, UMI's JpegXl): read exactly, and only into the chunk's image."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from cadence.datasets.episode_store import EpisodeStore
from cadence.datasets.image_chunks import ImageChunkError, jpeg2k_size
from cadence.untrusted import UntrustedFileError

from .image_stores import image_store


@pytest.mark.parametrize("codec", ["jpeg2k", "jpegxl"])
@pytest.mark.parametrize("name", ["images.zarr", "images.zarr.zip"])
def test_image_stores_read_exactly_what_was_written(tmp_path, codec, name):
    written = image_store(tmp_path / name, codec)
    store = EpisodeStore.open(tmp_path / name)
    assert store.n_episodes == 2 and store.features["img"].shape == (24, 32, 3)
    loaded = store.load()
    for key, values in written.items():
        np.testing.assert_array_equal(loaded[key], values)
    np.testing.assert_array_equal(store.episode(1, ["img"])["img"], written["img"][4:])


def test_grayscale_images_read_too(tmp_path):
    written = image_store(tmp_path / "gray.zarr", "jpeg2k", image=(16, 20))
    np.testing.assert_array_equal(EpisodeStore.open(tmp_path / "gray.zarr").load(["img"])["img"], written["img"])


def _swap_chunk(store, data: bytes, chunk="data/img/3.0.0.0"):
    (store / chunk).write_bytes(data)


# A header claiming 6000x6000: 2.6 kB as JPEG 2000, 9 kB as JPEG XL; OpenJPEG decodes it whole (460 MB)
# before imagecodecs compares it with the buffer it was given.
PEAK = """
import resource, sys
from cadence.datasets.episode_store import EpisodeStore
from cadence.untrusted import UntrustedFileError
store = EpisodeStore.open(sys.argv[1])
store.load(["state"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    store.load(["img"])
    print("read")
except UntrustedFileError as exc:
    print(str(exc))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.parametrize("codec, encode, match", [
    ("jpeg2k", imagecodecs.jpeg2k_encode, "a 6000x6000 JPEG 2000 image of 3 components in a chunk of 32x24x3"),
    ("jpegxl", imagecodecs.jpegxl_encode, r"JPEG XL image not of the chunk's shape \(24, 32, 3\)"),
])
def test_an_image_larger_than_its_chunk_is_refused_before_it_is_decoded(tmp_path, codec, encode, match):
    image_store(tmp_path / "s.zarr", codec)
    _swap_chunk(tmp_path / "s.zarr", encode(np.zeros((6000, 6000, 3), np.uint8), level=10))
    with pytest.raises(UntrustedFileError, match=f"s.zarr/data/img: cannot read.*{match}"):
        EpisodeStore.open(tmp_path / "s.zarr").load(["img"])
    done = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / "s.zarr")], capture_output=True, text=True,
                          timeout=120, check=True)
    message, grown_kib = done.stdout.strip().splitlines()
    assert "cannot read" in message and int(grown_kib) < 50 * 1024     # the image alone would be 105 MB


@pytest.mark.parametrize("image, kwargs, match", [
    (np.zeros((24, 32), np.uint8), {}, "of 1 components"),                        # a channel short
    (np.zeros((24, 32, 3), np.uint16), {}, "of 16 bits"),
    (np.zeros((24, 40, 3), np.uint8), {}, "a 40x24 JPEG 2000 image"),
])
def test_a_jpeg2k_image_of_another_kind_is_refused(tmp_path, image, kwargs, match):
    image_store(tmp_path / "s.zarr", "jpeg2k")
    _swap_chunk(tmp_path / "s.zarr", imagecodecs.jpeg2k_encode(image, **kwargs))
    with pytest.raises(UntrustedFileError, match=match):
        EpisodeStore.open(tmp_path / "s.zarr").load(["img"])


def test_jpeg2k_size_reads_jp2_files_and_bare_codestreams():
    image = np.zeros((30, 50, 3), np.uint8)
    for codecformat in ("jp2", "j2k"):
        data = imagecodecs.jpeg2k_encode(image, codecformat=codecformat)
        assert jpeg2k_size(data) == (30, 50, 3)
        with pytest.raises(ImageChunkError):
            jpeg2k_size(data[:40])
    assert jpeg2k_size(_pillow_jpeg2k(np.zeros((256, 256), np.uint8), tile_size=(64, 64))) == (256, 256, 1)
    for junk in (b"", b"\x00" * 64, b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 30):
        with pytest.raises(ImageChunkError):
            jpeg2k_size(junk)


def _pillow_jpeg2k(image: np.ndarray, **options) -> bytes:
    """A JPEG 2000 file as Pillow writes it (it writes tiles; imagecodecs does not)."""
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG2000", **options)
    return out.getvalue()


def test_jpeg2k_in_too_many_tiles_is_refused():
    data = _pillow_jpeg2k(np.zeros((640, 640), np.uint8), tile_size=(8, 8))       # 6,400 tiles
    with pytest.raises(ImageChunkError, match="6,400 tiles"):
        jpeg2k_size(data)


@pytest.mark.parametrize("change, match", [
    ({"chunks": [2, 24, 32, 3]}, "one uint8 image each"),
    ({"dtype": "<f4"}, "one uint8 image each"),
    ({"chunks": [1, 12, 32, 3]}, "one uint8 image each"),
])
def test_an_image_codec_needs_one_uint8_image_per_chunk(tmp_path, change, match):
    image_store(tmp_path / "s.zarr", "jpeg2k")
    meta = tmp_path / "s.zarr" / "data" / "img" / ".zarray"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), **change}))
    with pytest.raises(UntrustedFileError, match=f"s.zarr/data/img/.zarray: 'chunks'.*{match}"):
        EpisodeStore.open(tmp_path / "s.zarr")


def _with_palette(jp2: bytes, columns: int = 255) -> bytes:
    """``jp2`` with palette (pclr) and component mapping (cmap) boxes added to its header box: each
    of the codestream's values mapped to ``columns`` components."""
    def box(kind, payload):
        return struct.pack(">I4s", 8 + len(payload), kind) + payload

    at, out = 12, [jp2[:12]]
    while at < len(jp2):
        length, kind = struct.unpack_from(">I4s", jp2, at)
        if kind == b"jp2h":
            palette = struct.pack(">HB", 256, columns) + bytes([7] * columns) + bytes(256 * columns)
            mapping = b"".join(struct.pack(">HBB", 0, 1, c) for c in range(columns))
            out.append(box(b"jp2h", jp2[at + 8: at + length] + box(b"pclr", palette) + box(b"cmap", mapping)))
        else:
            out.append(jp2[at: at + length])
        at += length
    return b"".join(out)


def test_a_jp2_palette_does_not_multiply_the_components(tmp_path):
    """OpenJPEG applied the palette before imagecodecs compared shapes: 1 component became 255
    int32 planes (a 67 kB chunk of 1024x1024 took 1 GB). The codestream alone is decoded."""
    written = image_store(tmp_path / "p.zarr", "jpeg2k", image=(512, 512))
    _swap_chunk(tmp_path / "p.zarr", _with_palette(imagecodecs.jpeg2k_encode(written["img"][3], level=0,
                                                                             reversible=True)), "data/img/3.0.0")
    done = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / "p.zarr")], capture_output=True, text=True,
                          timeout=120, check=True)
    message, grown_kib = done.stdout.strip().splitlines()
    assert message == "read" and int(grown_kib) < 100 * 1024        # 255 planes of 512x512 int32: 267 MB
    np.testing.assert_array_equal(EpisodeStore.open(tmp_path / "p.zarr").load(["img"])["img"], written["img"])


@pytest.mark.parametrize("options, match", [
    ({"codeblock_size": (4, 4), "precinct_size": (8, 8)}, "precincts and code-blocks per component, more than"),
    ({"precinct_size": (8, 8)}, "precincts down to 1"),
])
def test_jpeg2k_in_too_many_precincts_or_code_blocks_is_refused(options, match):
    """OpenJPEG keeps hundreds of bytes for every precinct and code-block: 2x2 precincts of 4x4
    code-blocks took it 2.3 GB for a 2048x2048 image."""
    with pytest.raises(ImageChunkError, match=match):
        jpeg2k_size(_pillow_jpeg2k(np.zeros((1024, 1024), np.uint8), **options))
    assert jpeg2k_size(_pillow_jpeg2k(np.zeros((1024, 1024), np.uint8), codeblock_size=(16, 16),
                                      precinct_size=(128, 128))) == (1024, 1024, 1)


def test_an_image_codec_needs_images_stored_row_by_row(tmp_path):
    image_store(tmp_path / "s.zarr", "jpegxl")
    meta = tmp_path / "s.zarr" / "data" / "img" / ".zarray"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "order": "F"}))
    with pytest.raises(UntrustedFileError, match="'order' with imagecodecs_jpegxl must be 'C'"):
        EpisodeStore.open(tmp_path / "s.zarr")


def _main_header_marker(stream: bytes, marker: bytes) -> int:
    """Where ``marker`` starts in a codestream's main header (after SOC)."""
    at = 2
    while stream[at:at + 2] != marker:
        at += 2 + struct.unpack_from(">H", stream, at + 2)[0]
    return at


def test_a_marker_openjpeg_would_scan_past_is_refused():
    """OpenJPEG skips an unknown marker by scanning for the next one it knows, so a COD hidden
    inside one would be decoded unchecked: only markers it reads by their length pass."""
    stream = imagecodecs.jpeg2k_encode(np.zeros((64, 64), np.uint8), codecformat="j2k")
    cod = _main_header_marker(stream, b"\xff\x52")
    hidden = b"\xff\x6e" + struct.pack(">H", 6) + b"\x00" * 4
    with pytest.raises(ImageChunkError, match="marker ff6e"):
        jpeg2k_size(stream[:cod] + hidden + stream[cod:])


def test_quality_layers_count_as_packets():
    """OpenJPEG visits every packet (layers x precincts): 65,535 layers took it 14 s and 1.8 GB."""
    stream = bytearray(imagecodecs.jpeg2k_encode(np.zeros((64, 64), np.uint8), codecformat="j2k"))
    cod = _main_header_marker(bytes(stream), b"\xff\x52")
    assert jpeg2k_size(bytes(stream)) == (64, 64, 1)
    struct.pack_into(">H", stream, cod + 4 + 2, 65535)          # Scod, progression, then the layer count
    with pytest.raises(ImageChunkError, match="65,535 quality layers"):
        jpeg2k_size(bytes(stream))
