"""Encoded images from elsewhere (LeRobot image columns, ROS CompressedImage): bytes only, Pillow
only, the size from the header checked before a pixel is decoded."""
import io
import struct
import zlib

import av
import numpy as np
import pytest
from PIL import Image

from cadence.datasets.episode_store import StoreError
from cadence.datasets.image_decode import decode_image


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_png_jpeg_and_grey_images_decode_to_rgb():
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(png(Image.fromarray(rgb)), "x"), rgb)
    grey = decode_image(png(Image.new("L", (8, 6), 7)), "x")
    assert grey.shape == (6, 8, 3) and (grey == 7).all()
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG", quality=95)
    assert decode_image(jpeg.getvalue(), "x").shape == (48, 64, 3)


def test_an_image_too_large_is_refused_from_its_header_before_decoding():
    huge = png(Image.new("L", (4096, 4096)))          # 16.8M pixels in a few kB
    assert len(huge) < 100_000
    with pytest.raises(StoreError, match=r"big: an image of 4096x4096 pixels \(at most 16,777,216 values"):
        decode_image(huge, "big")


@pytest.mark.parametrize("value", ["/etc/hostname", "http://127.0.0.1:9/x.png", [1, 2]])
def test_only_bytes_are_taken_never_a_path_or_url(value):
    with pytest.raises(StoreError, match="step 3: image data must be bytes, got"):
        decode_image(value, "step 3")


def test_bytes_pillow_cannot_read_are_refused_not_handed_to_another_reader(tmp_path):
    """A header Pillow refuses (here a bad checksum) used to fall back to imageio, which decoded
    without the size check, and an mp4 as image bytes had FFmpeg decode every frame."""
    header = struct.pack(">IIBBBBB", 5000, 5000, 8, 0, 0, 0, 0)
    bad_crc = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + b"\0\0\0\0"
               + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))
    with pytest.raises(StoreError, match="x: not a decodable PNG / JPEG / WEBP image"):
        decode_image(bad_crc, "x")
    video = tmp_path / "v.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(5):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode())
    with pytest.raises(StoreError, match="x: not a decodable PNG / JPEG / WEBP image"):
        decode_image(video.read_bytes(), "x")


def test_16_bit_images_are_refused_naming_the_mode():
    deep = png(Image.fromarray(np.full((4, 4), 60000, np.uint16)))
    with pytest.raises(StoreError, match="x: a PNG image of mode I;16"):
        decode_image(deep, "x")
