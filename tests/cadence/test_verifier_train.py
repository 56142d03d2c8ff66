"""cadence verifier train: candidates scored in simulation on training seeds only, a value
network that learns their order, saved without pickles, loaded with checks, used by search."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from cadence.config import SearchConfig, VerifierTrainApp
from cadence.policies.search import SearchContext
from cadence.policies.value_verifier import ChunkValue, VerifierError, load_value, save_value
from cadence.sim_eval import set_search
from cadence.untrusted import UntrustedFileError
from cadence.verifier_train import (Candidates, check_seeds, cross_validate, fit, in_batches, ranking_metrics, run,
                                    values_from)
from tests.conftest import train_tiny_run


def train_config(checkpoint, **overrides):
    return OmegaConf.merge(OmegaConf.structured(VerifierTrainApp), {
        "checkpoint": str(checkpoint), "episodes": 3, "val_episodes": 1, "candidates": 3, "batch_envs": 4,
        "hidden": 16, "steps": 20, "batch_size": 8, "device": "cpu", **overrides})


def synthetic(n: int, seed: int) -> Candidates:
    """Scores that depend on both the observation and the plan: prefer plans whose first action
    is near the conditioning's first feature."""
    g = torch.Generator().manual_seed(seed)
    cond, plans = torch.randn(n, 4, generator=g), torch.rand(n, 5, 3, 2, generator=g) * 2 - 1
    return Candidates(cond, plans, -(plans[:, :, 0, 0] - cond[:, None, 0].clamp(-1, 1)).abs())


def test_the_value_network_learns_the_order_of_candidates():
    model = fit(synthetic(2048, 0), hidden=64, steps=400, batch_size=128, lr=3e-3, seed=0,
                action_low=[-1.0, -1.0], action_high=[1.0, 1.0], progress=False)
    held = ranking_metrics(model, synthetic(512, 1))
    assert held["pairwise_accuracy"] > 0.85
    assert held["regret"] < 0.5 * held["random_pick_regret"]


def test_cross_validation_scores_each_fold_by_a_verifier_that_never_saw_it():
    data, seen = synthetic(1000, 0), []

    def fit_fold(a, b, labelled=data):
        rest = Candidates.concat([labelled.rows(0, a), labelled.rows(b, 1000)])
        seen.append(rest)
        return ranking_values(fit(rest, hidden=64, steps=300, batch_size=128, lr=3e-3, seed=0,
                                  action_low=[-1.0, -1.0], action_high=[1.0, 1.0], progress=False), labelled.rows(a, b))
    cv = cross_validate(data, 4, fit_fold, progress=False)
    assert [len(r.scores) for r in seen] == [750] * 4 and cv["folds"] == 4 and cv["observations"] == 1000
    for k, rest in enumerate(seen):           # fold k (rows 250k..250k+249) is exactly what its fit left out
        left_out = data.rows(250 * k, 250 * (k + 1))
        assert not any(torch.equal(row, r) for row in left_out.cond[:20] for r in rest.cond)
        assert torch.equal(torch.cat([rest.cond, left_out.cond]).sort(dim=0).values, data.cond.sort(dim=0).values)
    assert cv["pairwise_accuracy"] > 0.85 and cv["regret"] < 0.5 * cv["random_pick_regret"]
    # labels the conditioning and plan cannot predict: cross-validation says so, where the fit's own data would not
    noise = Candidates(data.cond, data.plans, torch.rand(data.scores.shape, generator=torch.Generator().manual_seed(1)))
    assert cross_validate(noise, 4, lambda a, b: fit_fold(a, b, noise), progress=False)["pairwise_accuracy"] < 0.56
    with pytest.raises(VerifierError, match="cv_folds must be 0 \\(none\\) or 2..1000"):
        cross_validate(data, 1001, fit_fold, progress=False)


def ranking_values(model, data):
    return in_batches(model.eval(), data)


def test_each_member_of_an_ensemble_is_fitted_as_if_alone_and_the_ensemble_scores_their_mean():
    data = synthetic(512, 0)
    settings = dict(hidden=16, steps=30, batch_size=32, lr=3e-3, seed=3, action_low=[-1.0, -1.0],
                    action_high=[1.0, 1.0], progress=False)
    alone, ensemble = fit(data, **settings), fit(data, **settings, members=3)
    assert len(ensemble.heads) == 3 and ensemble.spec()["members"] == 3
    for name, value in alone.net.state_dict().items():   # member 0: the same start, batches and steps as alone
        assert torch.equal(ensemble.heads[0].state_dict()[name], value), name
    assert not torch.equal(ensemble.heads[1][0].weight, ensemble.heads[0][0].weight)
    cond, plans = data.cond[:4], data.plans[:4]
    x = ensemble.inputs(cond, plans)
    mean = torch.stack([head(x).squeeze(-1) for head in ensemble.heads]).mean(dim=0)
    assert torch.allclose(ensemble(cond, plans), mean, atol=1e-6)


def test_denoiser_features_computed_once_fit_as_if_computed_by_the_fit():
    from cadence.policies.denoiser_features import DenoiserFeatures
    from tests.deploy.onnx_cases import make_policy

    policy = make_policy("ddpm", down_dims=[16, 32])
    g = torch.Generator().manual_seed(0)
    data = Candidates(torch.randn(40, policy.denoiser.spec["cond_dim"], generator=g), torch.rand(40, 3, 15, 2, generator=g),
                      torch.rand(40, 3, generator=g))
    features = DenoiserFeatures.from_policy(policy)
    raw = in_batches(features.raw, data)
    settings = dict(hidden=8, steps=10, batch_size=8, lr=1e-3, seed=0, action_low=[-1.0, -1.0],
                    action_high=[1.0, 1.0], progress=False, dropout=0.3)
    by_fit = fit(data, **settings, features=DenoiserFeatures.from_policy(policy))
    given = fit(data, **settings, features=features, raw=raw.clone())
    assert torch.equal(given.features.mean, by_fit.features.mean)
    for name, value in by_fit.net.state_dict().items():
        assert torch.equal(given.net.state_dict()[name], value), name
    assert torch.allclose(values_from(given, raw), ranking_values(given, data), atol=1e-5)


def test_a_centered_network_sees_what_sets_a_candidate_apart_from_the_others():
    """Prefer the candidate nearest the mean of its K, around an offset the conditioning does not
    hold: only the candidate's difference from the others tells."""
    def near_the_mean(n, seed):
        g = torch.Generator().manual_seed(seed)
        offset = torch.rand(n, 1, 1, 1, generator=g) * 1.6 - 0.8
        plans = offset + (torch.rand(n, 5, 3, 2, generator=g) * 0.4 - 0.2)
        first = plans[:, :, 0, 0]
        return Candidates(torch.zeros(n, 4), plans, -(first - first.mean(dim=1, keepdim=True)).abs())

    accuracy = {}
    for centered in (False, True):
        model = fit(near_the_mean(2048, 0), hidden=64, steps=400, batch_size=128, lr=3e-3, seed=0,
                    action_low=[-1.0, -1.0], action_high=[1.0, 1.0], progress=False, centered=centered)
        accuracy[centered] = ranking_metrics(model, near_the_mean(512, 1))["pairwise_accuracy"]
    assert accuracy[True] > 0.85 and accuracy[False] < 0.75, accuracy


def test_pairs_count_by_their_score_gap():
    from cadence.verifier_train import pairwise_loss

    scores = torch.tensor([[10.0, 0.01, 0.0]])
    # only the near-tie is misordered: it weighs 0.01 against 1 + 1 + 0.01 for the rest
    misordered = torch.tensor([[5.0, -1.0, 1.0]], requires_grad=True)
    assert pairwise_loss(misordered, scores) < 0.05
    assert pairwise_loss(torch.tensor([[-5.0, 1.0, 0.0]]), scores) > 2.0        # the success ranked last: costly
    assert pairwise_loss(torch.zeros(1, 3), torch.ones(1, 3)) == 0.0             # all tied: nothing to learn


def test_training_seeds_never_reach_the_evaluation_seeds():
    assert check_seeds(train_config("x", seed=10, episodes=5, val_episodes=2)) == ([10, 11, 12, 13, 14], [15, 16])
    with pytest.raises(VerifierError, match="reach the evaluation seeds"):
        check_seeds(train_config("x", seed=99_995, episodes=5, val_episodes=1))


def test_train_save_load_and_search_with_it(tiny_store, tmp_path, capsys):
    run_dir = train_tiny_run(tiny_store, tmp_path / "run")
    out = run(train_config(run_dir), progress=False)
    assert out == run_dir / "verifier" and "value verifier (denoiser features):" in capsys.readouterr().out
    info = json.loads((out / "verifier.json").read_text())
    assert info["train_seeds"] == [0, 4] and info["held_out"]["observations"] > 0
    assert 0.0 <= info["held_out"]["pairwise_accuracy"] <= 1.0
    assert load_value(out).model.features is not None and (out / "candidates.safetensors").is_file()
    refit = run(train_config(run_dir, refit=True, steps=5, cv_folds=2, members=2), progress=False)   # no rollouts
    refitted = json.loads((refit / "verifier.json").read_text())
    assert refitted["members"] == 2 and refitted["fit"]["members"] == 2
    assert refitted["observations"] == info["observations"] and info["cross_validation"] is None
    assert refitted["cross_validation"]["folds"] == 2 and refitted["cross_validation"]["observations"] == info["observations"]
    assert "2-fold cross-validation: pairwise accuracy" in capsys.readouterr().out
    verifier = load_value(refit)                                # the verifier.json with its numbers loads
    assert len(verifier.model.heads) == 2
    with pytest.raises(VerifierError, match="collect again"):
        run(train_config(run_dir, refit=True, episodes=5), progress=False)

    from cadence.checkpoint import load_policy
    policy, _, _ = load_policy(run_dir)
    search = OmegaConf.structured(SearchConfig(candidates=4, verifier="value"))
    with pytest.raises(VerifierError, match="trained on seeds 0..3"):
        set_search(policy, search, run_dir / "checkpoint", range(2, 12))
    set_search(policy, search, run_dir / "checkpoint", range(100_000, 100_010))
    assert policy.search.verifier.name == "value"
    obs = {"state": torch.randn(2, policy.obs_horizon, 6)}
    kept = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(0)).actions
    # the kept chunk is the one the value network scores highest among the candidates drawn
    from cadence.policies.search import CandidateSampler
    sampler = CandidateSampler(policy, obs, None)
    noises = torch.randn(2, 4, policy.pred_horizon, policy.action_dim, generator=torch.Generator().manual_seed(0))
    chunks = sampler(noises)
    best = verifier(chunks, SearchContext(obs, policy.obs_horizon - 1, cond=sampler.cond)).argmax(dim=1)
    assert torch.allclose(kept, chunks[torch.arange(2), best], atol=1e-5)
    # the default input for a UNet policy is its denoiser's features; plans on request, from the same collection
    assert info["features"] == "denoiser" and info["fit"] == {"hidden": 16, "steps": 20, "dropout": 0.3,
                                                               "weight_decay": 0.1, "members": 1}
    run(train_config(run_dir, refit=True, features="plan", hidden=None), progress=False)
    on_plans = load_value(out)
    assert on_plans.model.features is None and on_plans.info["fit"]["hidden"] == 256


def test_more_workers_than_the_memory_holds_and_bad_settings_are_refused_before_any_rollout(tiny_store, tmp_path):
    from cadence.envs.worker_memory import WorkerMemoryError

    run_dir = train_tiny_run(tiny_store, tmp_path / "run")
    with pytest.raises(WorkerMemoryError, match="batch_envs=90000 with async_envs=true starts 90000"):
        run(train_config(run_dir, episodes=90_000, batch_envs=90_000, async_envs=True), progress=False)
    with pytest.raises(VerifierError, match="batch_envs must be >= 1"):
        run(train_config(run_dir, batch_envs=0), progress=False)
    with pytest.raises(VerifierError, match="cv_folds must be 0 \\(none\\) or >= 2"):
        run(train_config(run_dir, cv_folds=1), progress=False)
    assert not (run_dir / "verifier").exists()


def test_the_verifiers_input_and_its_fit_settings_are_checked_before_any_rollout():
    from cadence.policies.denoiser_features import DenoiserFeatures
    from cadence.verifier_train import choose_features
    from tests.deploy.onnx_cases import make_policy

    unet, transformer = make_policy("ddpm", down_dims=[16, 32]), make_policy("ddpm", network="transformer")
    features, fitting = choose_features(train_config("x", hidden=None, steps=None), unet)
    assert isinstance(features, DenoiserFeatures) and fitting == {"hidden": 64, "steps": 1500, "dropout": 0.3,
                                                                  "weight_decay": 0.1, "members": 1}
    features, fitting = choose_features(train_config("x", hidden=None, steps=None), transformer)    # auto: plans
    assert features is None and fitting == {"hidden": 256, "steps": 3000, "dropout": 0.0, "weight_decay": 1e-4,
                                            "members": 1}
    assert choose_features(train_config("x", features="plan", weight_decay=0.5), unet)[1]["weight_decay"] == 0.5
    for overrides, policy, match in [({"features": "denoiser"}, transformer, "UNet denoiser.*TransformerDenoiser"),
                                     ({"features": "pixels"}, unet, "features must be"),
                                     ({"noise": [0.1, 1.5]}, unet, "noise must be fractions"),
                                     ({"noise": []}, unet, "noise must be fractions"),
                                     ({"centered": True}, unet, "centered applies to features=plan"),
                                     ({"features": "plan", "dropout": 0.2}, unet, "dropout applies"),
                                     ({"dropout": 1.0}, unet, "dropout < 1"),
                                     ({"members": 0}, unet, "1 <= members <= 64"),
                                     ({"members": 65}, unet, "1 <= members <= 64")]:
        with pytest.raises(VerifierError, match=match):
            choose_features(train_config("x", **overrides), policy)


def test_a_continued_label_runs_the_policys_own_chunks_after_each_candidate(tiny_store, tmp_path):
    """continue_chunks=M: recorded in verifier.json and the collection (a refit asking for another M is
    refused). What the label runs: tests/envs/test_rollout.py and tests/policies/test_search.py."""
    run_dir = train_tiny_run(tiny_store, tmp_path / "run")
    out = run(train_config(run_dir, continue_chunks=1, episodes=2, val_episodes=0), progress=False)
    info = json.loads((out / "verifier.json").read_text())
    assert info["continue_chunks"] == 1 and info["observations"] > 0
    plain = run(train_config(run_dir, episodes=2, val_episodes=0, out_dir=str(tmp_path / "plain")), progress=False)
    from cadence.untrusted import load_safetensors
    further, nearer = (load_safetensors(d / "candidates.safetensors") for d in (out, plain))
    assert torch.equal(further["train.plans"], nearer["train.plans"])         # the same candidates, other labels
    assert not torch.equal(further["train.scores"], nearer["train.scores"])
    with pytest.raises(VerifierError, match="collect again"):
        run(train_config(run_dir, refit=True, episodes=2, val_episodes=0), progress=False)
    with pytest.raises(VerifierError, match="continue_chunks must be >= 0"):
        run(train_config(run_dir, continue_chunks=-1), progress=False)


def test_merged_collections_fit_together_and_keep_every_seed_range(tiny_store, tmp_path):
    """merge=[...]: other collections of the same policy, K and label join the fit (their held-out part
    too); every collection's seeds are recorded and refused for evaluation; a collection that
    overlaps, or was collected otherwise, is refused naming its file."""
    run_dir = train_tiny_run(tiny_store, tmp_path / "run")
    first = run(train_config(run_dir, episodes=2, val_episodes=1, out_dir=str(tmp_path / "a")), progress=False)
    second = run(train_config(run_dir, seed=10, episodes=2, val_episodes=1, out_dir=str(tmp_path / "b")), progress=False)
    sizes = [json.loads((d / "verifier.json").read_text()) for d in (first, second)]
    merged = run(train_config(run_dir, episodes=2, val_episodes=1, out_dir=str(first), refit=True,
                              merge=[str(second)]), progress=False)
    info = json.loads((merged / "verifier.json").read_text())
    held_b = sizes[1]["held_out"]["observations"]
    assert info["observations"] == sizes[0]["observations"] + sizes[1]["observations"] + held_b
    assert info["held_out"]["observations"] == sizes[0]["held_out"]["observations"]     # its own held-out part only
    assert info["train_seeds"] == [[0, 3], [10, 3]]
    verifier = load_value(merged)
    assert verifier.train_seeds == [range(0, 3), range(10, 13)]
    verifier.check_unseen(range(3, 10))
    with pytest.raises(VerifierError, match="trained on seeds 10..12"):
        verifier.check_unseen(range(12, 20))

    refit = dict(episodes=2, val_episodes=1, out_dir=str(first), refit=True)
    with pytest.raises(VerifierError, match="overlap another collection's 0..2"):
        run(train_config(run_dir, **refit, merge=[str(first)]), progress=False)
    with pytest.raises(VerifierError, match="does not exist"):
        run(train_config(run_dir, **refit, merge=[str(tmp_path / "nowhere")]), progress=False)
    other = run(train_config(run_dir, seed=20, episodes=1, val_episodes=0, candidates=2,
                             out_dir=str(tmp_path / "c")), progress=False)
    with pytest.raises(VerifierError, match="c/candidates.safetensors was collected with"):
        run(train_config(run_dir, **refit, merge=[str(other)]), progress=False)
    with pytest.raises(VerifierError, match="reach the evaluation seeds"):
        run(train_config(run_dir, **refit, eval_seed=12, merge=[str(second)]), progress=False)

    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    damaged = {"misfit": (lambda t, m: ({**t, "train.scores": t["train.scores"][:1]}, m), "do not fit together"),
               "double": (lambda t, m: ({**t, "train.plans": t["train.plans"].double()}, m), "must be float32"),
               "more": (lambda t, m: ({**t, "train.plans": t["train.plans"].repeat(1, 500, 1, 1),   # K x 500
                                          "train.scores": t["train.scores"].repeat(1, 500)}, m), "this fit needs"),
               "huge": (lambda t, m: ({**t, "train.scores": t["train.scores"] + 3e38}, m), "reach beyond"),
               "unseeded": (lambda t, m: (t, {**m, "seed": "100000", "episodes": "-1"}), "not a seed range")}
    for name in ("truncated", *damaged):               # a merged file from elsewhere, damaged
        folder = tmp_path / name
        shutil.copytree(second, folder)
        path = folder / "candidates.safetensors"
        if name == "truncated":
            path.write_bytes(path.read_bytes()[:-64])
            expected = (UntrustedFileError, "candidates.safetensors")
        else:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
            tensors, meta = damaged[name][0](load_file(str(path)), meta)
            save_file(tensors, str(path), metadata=meta)
            expected = (VerifierError, damaged[name][1])
        with pytest.raises(expected[0], match=expected[1]):
            run(train_config(run_dir, **refit, merge=[str(folder)]), progress=False)
    changed = tmp_path / "changed"                   # the same run with other weights: another policy
    shutil.copytree(run_dir, changed)
    weights = load_file(str(changed / "checkpoint" / "model.safetensors"))
    name = next(iter(weights))
    save_file({**weights, name: weights[name] + 0.01}, str(changed / "checkpoint" / "model.safetensors"))
    with pytest.raises(VerifierError, match="collect again"):
        run(train_config(changed, **refit), progress=False)
    with pytest.raises(VerifierError, match="b/candidates.safetensors was collected with"):
        run(train_config(changed, episodes=2, val_episodes=1, out_dir=str(tmp_path / "d"), merge=[str(second)]),
            progress=False)


def test_a_tampered_verifier_is_refused_naming_the_file(tmp_path):
    model = ChunkValue(4, 3, 2, 8, [-1.0, -1.0], [1.0, 1.0])
    folder = save_value(model, {"train_seeds": [0, 5]}, tmp_path / "v")
    spec = json.loads((folder / "verifier.json").read_text())
    for key, value, match in [("hidden", 9, "do not match"), ("hidden", 10 ** 9, "hidden"),
                              ("action_low", [0.0], "action_low"), ("train_seeds", [0], "train_seeds"),
                              ("train_seeds", [[0, 5], [9]], "train_seeds"), ("train_seeds", [[0, 5], 9], "train_seeds"),
                              ("train_seeds", [[0, 5], [-1, 2]], "train_seeds"),
                              ("format", "pickle", "format"), ("centered", "yes", "centered"),
                              ("centered", True, "do not match"),       # the weights are for uncentered inputs
                              ("members", 2, "do not match"), ("members", 0, "members"), ("members", 10 ** 6, "members"),
                              ("action_low", [2.0, 0.0], "'action_low' is above 'action_high'"),
                              ("action_high", [1e300, 1.0], "action_high\\[0\\]' is 1e\\+300, outside")]:
        (folder / "verifier.json").write_text(json.dumps({**spec, key: value}))
        with pytest.raises(UntrustedFileError, match=match) as caught:
            load_value(folder)
        assert "verifier.json" in str(caught.value) or "model.safetensors" in str(caught.value)
    (folder / "verifier.json").write_text(json.dumps(spec))
    weights = folder / "model.safetensors"
    assert torch.equal(load_value(folder).model.net[0].weight, model.net[0].weight)
    weights.write_bytes(weights.read_bytes()[:-40])                             # truncated
    with pytest.raises(UntrustedFileError, match="model.safetensors"):
        load_value(folder)
    with pytest.raises(UntrustedFileError, match="cadence verifier train"):
        load_value(tmp_path / "nowhere")


def test_a_tampered_denoiser_verifier_is_refused_before_anything_is_allocated(tmp_path):
    from cadence.policies.denoiser_features import DenoiserFeatures
    from tests.deploy.onnx_cases import make_policy

    policy = make_policy("ddpm", down_dims=[16, 32])
    features = DenoiserFeatures.from_policy(policy)
    model = ChunkValue(features.unet.spec["cond_dim"], 15, 2, 8, [-1.0, -1.0], [1.0, 1.0], features=features, dropout=0.3)
    folder = save_value(model, {"train_seeds": [0, 5]}, tmp_path / "v")
    spec = json.loads((folder / "verifier.json").read_text())
    loaded = load_value(folder).model
    assert loaded.features is not None and torch.equal(loaded.features.unet.head[-1].weight, policy.denoiser.head[-1].weight)
    unet = spec["unet"]
    for key, value, match in [("unet", {**unet, "down_dims": [65_536, 65_536]}, "parameters, more than"),
                              ("unet", {**unet, "n_groups": 5}, "build no network"),
                              ("pred_horizon", 17, "not divisible"),
                              ("unet", {**unet, "down_dims": [16, 64]}, "do not match"),
                              ("unet", {k: v for k, v in unet.items() if k != "n_groups"}, "'unet' must hold"),
                              ("unet", {**unet, "kernel_size": 2.5}, "kernel_size"),
                              ("pred_horizon", 8, "pred_horizon"), ("noise_points", 2, "do not match"),
                              ("noise_points", 10 ** 6, "noise_points"), ("dropout", 1.5, "dropout"),
                              ("features", "pickle", "'features' must be"),
                              ("unet", {**unet, "kernel_size": 4}, "kernel_size must be odd")]:
        (folder / "verifier.json").write_text(json.dumps({**spec, key: value}))
        with pytest.raises(UntrustedFileError, match=match) as caught:
            load_value(folder)
        assert "verifier.json" in str(caught.value) or "model.safetensors" in str(caught.value)
    (folder / "verifier.json").write_text(json.dumps(spec))
    from safetensors.torch import load_file, save_file
    weights = load_file(str(folder / "model.safetensors"))
    for name, value, match in [("features.std", torch.zeros_like(weights["features.std"]), "'features.std' has entries below"),
                               ("features.action_scale", weights["features.action_scale"] * 1e30, "beyond \\+-1e\\+06"),
                               ("features.std", weights["features.std"].double(), "is torch.float64, not torch.float32"),
                               ("features.mean", weights["features.mean"].double() + 1e300, "NaN or infinite values \\(in float32\\)")]:
        save_file({**weights, name: value}, str(folder / "model.safetensors"))
        with pytest.raises(UntrustedFileError, match=match):
            load_value(folder)


def test_a_verifier_of_other_sizes_is_refused_and_a_candidate_it_cannot_score_is_never_kept():
    from cadence.policies.value_verifier import ValueVerifier
    from tests.deploy.onnx_cases import make_policy

    policy = make_policy("ddpm", down_dims=[16, 32])           # To 2, Tp 16, Da 2: plans of 15 steps
    cond = policy.encoder.out_dim
    for sizes, match in [((cond, 14, 2), "trained on plans of 14 x 2"), ((cond, 15, 3), "trained on plans of 15 x 3"),
                         ((cond + 1, 15, 2), f"'cond_dim' is {cond + 1}, the policy's conditioning has {cond}")]:
        verifier = ValueVerifier(ChunkValue(*sizes, 8, [-1.0] * sizes[2], [1.0] * sizes[2]), {}, "theirs/verifier")
        with pytest.raises(VerifierError, match="theirs/verifier: " + match):
            verifier.check_fits(policy)
    verifier = ValueVerifier(ChunkValue(cond, 15, 2, 8, [-1.0, -1.0], [1.0, 1.0]), {})
    verifier.check_fits(policy)
    chunks = torch.randn(2, 3, 16, 2)
    chunks[0, 1, 5, 0] = float("nan")
    scores = verifier(chunks, SearchContext({}, 1, cond=torch.randn(2, cond)))
    assert scores[0, 1] == float("-inf") and torch.isfinite(scores[0, [0, 2]]).all() and torch.isfinite(scores[1]).all()
    with pytest.raises(VerifierError, match="trained on plans of 15 x 2"):
        verifier(chunks[:, :, :8], SearchContext({}, 1, cond=torch.randn(2, cond)))


def test_an_export_carries_the_value_verifier_and_searches_with_it(tiny_store, tmp_path):
    from cadence.deploy.exported_policy import load_exported
    from cadence.export import export_onnx
    from cadence.policies.search import SearchSettings, search_chunk

    run_dir = train_tiny_run(tiny_store, tmp_path / "run")
    run(train_config(run_dir, episodes=2, val_episodes=0), progress=False)
    export_dir = export_onnx(run_dir, tmp_path / "export", echo=None)
    assert not (export_dir / "verifier" / "candidates.safetensors").exists()      # the model, not its data
    onnx_policy = load_exported(export_dir)
    from cadence.checkpoint import load_policy
    policy, _, _ = load_policy(run_dir)
    obs = {"state": torch.randn(2, policy.obs_horizon, 6)}
    from cadence.deploy.value_graph import load_value_graph
    kept = [search_chunk(p, obs, SearchSettings(4, verifier=verifier), generator=torch.Generator().manual_seed(1))
            for p, verifier in ((onnx_policy, load_value(export_dir / "verifier")), (policy, load_value(run_dir / "verifier")),
                                (onnx_policy, load_value_graph(export_dir / "verifier", "cpu")))]
    assert torch.allclose(kept[0], kept[1], atol=1e-4) and torch.allclose(kept[2], kept[1], atol=1e-4)
