"""A store built beside its target: swapped in when complete, never half of it; what a kill at
each point of the swap leaves is recovered to a complete store."""
import numpy as np
import pytest

from cadence.datasets.staged_store import recover, staged_store
from tests.datasets.test_episode_store import assert_holds, build_store, make_episode


def test_an_error_while_building_leaves_the_old_store(tmp_path):
    out = tmp_path / "s.zarr"
    old = build_store(out, [3, 4])
    with pytest.raises(RuntimeError), staged_store(out, fps=10) as store:
        store.append_episode(make_episode(np.random.default_rng(1), 5))
        raise RuntimeError("interrupted")
    assert_holds(out, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_a_complete_store_replaces_the_old_one(tmp_path):
    out = tmp_path / "s.zarr"
    build_store(out, [3, 4])
    new = make_episode(np.random.default_rng(2), 6)
    with staged_store(out, fps=10) as store:
        store.append_episode(new)
    assert_holds(out, [new])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


@pytest.mark.parametrize("moment", ["building", "between the renames", "deleting the old one"])
def test_recover_leaves_one_complete_store(tmp_path, moment):
    out, tmp, aside = tmp_path / "s.zarr", tmp_path / "s.zarr.tmp", tmp_path / "s.zarr.old"
    old = build_store(out, [3, 4], seed=1)
    new = build_store(tmp, [5], seed=2)
    if moment != "building":                       # the old store renamed aside ...
        out.rename(aside)
    if moment == "deleting the old one":           # ... the new one in, the old one partly deleted
        tmp.rename(out)
        (aside / ".zgroup").unlink()
    recover(out)
    assert_holds(out, new if moment == "deleting the old one" else old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
