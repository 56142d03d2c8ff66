"""image_size=[H, W] at import: checked sizes, area-averaged shrinking, frames otherwise untouched."""
import numpy as np
import pytest

from cadence.errors import CadenceError
from cadence.datasets.image_resize import image_size, resize_frames


def test_shrinking_averages_each_block():
    frames = np.zeros((2, 4, 6, 3), np.uint8)
    frames[:, :2, :3] = 200            # top-left quadrant bright
    out = resize_frames(frames, (2, 2))
    assert out.shape == (2, 2, 2, 3) and out.dtype == np.uint8
    assert out[:, 0, 0].tolist() == [[200] * 3] * 2 and out[:, 1, 1].tolist() == [[0] * 3] * 2


def test_same_size_or_none_leaves_frames_alone_and_enlarging_works():
    frames = np.random.default_rng(0).integers(0, 255, (3, 5, 7, 3), dtype=np.uint8)
    assert resize_frames(frames, None) is frames and resize_frames(frames, (5, 7)) is frames
    big = resize_frames(frames, (10, 14))
    assert big.shape == (3, 10, 14, 3) and abs(big.mean() - frames.mean()) < 5


@pytest.mark.parametrize("bad", [[0, 10], [10], "96x96", [10.5, 3], [100000, 100000]])
def test_bad_sizes_are_refused_naming_the_option(bad):
    with pytest.raises(CadenceError, match="image_size"):
        image_size(bad)
