import pytest

from cadence.policies.caching.bubbling_union import bubbling_union, layer_of, most_volatile

STEPS = {"blocks.0.self_attn": [0, 5], "blocks.0.ffn": [0, 3], "blocks.1.self_attn": [0, 7],
         "blocks.1.ffn": [0, 8], "blocks.2.self_attn": [0, 1], "blocks.2.ffn": [0, 9]}


def test_selected_branches_take_the_steps_of_feed_forwards_at_or_after_their_layer():
    out = bubbling_union(STEPS, ["blocks.1.self_attn", "blocks.0.ffn"])
    assert out["blocks.1.self_attn"] == [0, 7, 8, 9]          # ffn of layers 1 and 2
    assert out["blocks.0.ffn"] == [0, 3, 8, 9]                # ffn of layers 0, 1, 2
    assert {k: v for k, v in out.items() if k not in ("blocks.1.self_attn", "blocks.0.ffn")} == \
        {k: v for k, v in STEPS.items() if k not in ("blocks.1.self_attn", "blocks.0.ffn")}


def test_the_union_only_adds_steps():
    for selected in ([], ["blocks.2.ffn"], list(STEPS)):
        out = bubbling_union(STEPS, selected)
        assert all(set(STEPS[k]) <= set(out[k]) for k in STEPS)
    assert bubbling_union(STEPS, []) == STEPS


def test_ranking_by_volatility():
    vol = {"blocks.0.self_attn": 0.1, "blocks.0.ffn": 0.5, "blocks.1.self_attn": 0.5, "blocks.1.ffn": 0.2}
    assert most_volatile(vol, 2) == ["blocks.0.ffn", "blocks.1.self_attn"]
    assert most_volatile(vol, 0) == [] and len(most_volatile(vol, 10)) == 4


def test_bad_keys_are_named():
    assert layer_of("blocks.12.ffn") == 12
    with pytest.raises(ValueError, match="layers.0.ffn"):
        layer_of("layers.0.ffn")
    with pytest.raises(KeyError, match="blocks.9.ffn"):
        bubbling_union(STEPS, ["blocks.9.ffn"])
