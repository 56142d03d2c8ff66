import numpy as np
import pytest

from cadence.deploy.observation_history import ObservationHistory
from cadence.hardware.robot import Observation


def obs(seq, value):
    return Observation({"state": np.full(3, value, np.float32)}, t_capture=seq * 0.1, seq=seq)


def test_window_pads_with_the_oldest_and_keeps_the_last_horizon():
    h = ObservationHistory(2, ["state"])
    assert h.push(obs(0, 0.0))
    np.testing.assert_array_equal(h.window()["state"][0, :, 0], [0.0, 0.0])
    assert not h.push(obs(0, 9.0))                   # same seq: not new
    h.push(obs(1, 1.0))
    h.push(obs(2, 2.0))
    w = h.window()["state"]
    assert w.shape == (1, 2, 3) and list(w[0, :, 0]) == [1.0, 2.0]


def test_missing_key_and_empty_history_are_errors():
    h = ObservationHistory(2, ["state", "image"])
    with pytest.raises(KeyError, match="image"):
        h.push(obs(0, 0.0))
    with pytest.raises(RuntimeError):
        h.window()
