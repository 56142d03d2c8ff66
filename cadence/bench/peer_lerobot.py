"""LeRobot's ``DiffusionPolicy`` timed on one configuration: run by ``cadence bench peer`` with
the peer's own Python (its virtual environment: lerobot pins an older torch), never imported by
cadence. Prints one JSON object on its last line.

    python peer_lerobot.py '{"case": {...}, "steps": 10, "chunks": 5, "threads": 2, "seed": 0,
                             "train_batches": 0, "batch_size": 64}'
"""
import json
import sys
import time
from importlib import metadata


def _policy(case: dict, steps: int):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(case["state_dim"],))}
    if case.get("image"):
        inputs["observation.image"] = PolicyFeature(type=FeatureType.VISUAL, shape=tuple(case["image"]))
    if case.get("env_state_dim"):
        inputs["observation.environment_state"] = PolicyFeature(type=FeatureType.ENV,
                                                                shape=(case["env_state_dim"],))
    config = DiffusionConfig(
        input_features=inputs,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(case["action_dim"],))},
        n_obs_steps=case["obs_horizon"], horizon=case["pred_horizon"], n_action_steps=case["exec_horizon"],
        down_dims=tuple(case["down_dims"]), kernel_size=case["kernel_size"], n_groups=case["n_groups"],
        diffusion_step_embed_dim=case["level_embed_dim"], crop_shape=tuple(case["crop"]) if case.get("crop") else None,
        crop_is_random=True, use_group_norm=True, pretrained_backbone_weights=None,
        spatial_softmax_num_keypoints=case.get("keypoints", 32), noise_scheduler_type="DDIM",
        num_train_timesteps=100, num_inference_steps=steps, device="cpu")
    return DiffusionPolicy(config)


def _batch(case: dict, batch_size: int, torch, with_action: bool):
    t, out = case["obs_horizon"], {}
    out["observation.state"] = torch.rand(batch_size, t, case["state_dim"]) * 2 - 1
    if case.get("env_state_dim"):
        out["observation.environment_state"] = torch.rand(batch_size, t, case["env_state_dim"]) * 2 - 1
    if case.get("image"):
        image = torch.rand(batch_size, t, *case["image"])
        out["observation.image"] = image
        out["observation.images"] = image.unsqueeze(2)        # what select_action stacks
    if with_action:
        out["action"] = torch.rand(batch_size, case["pred_horizon"], case["action_dim"]) * 2 - 1
        out["action_is_pad"] = torch.zeros(batch_size, case["pred_horizon"], dtype=torch.bool)
        out.pop("observation.images", None)
    return out


def main(args: dict) -> dict:
    import torch

    torch.set_num_threads(args["threads"])
    torch.manual_seed(args["seed"])
    case = args["case"]
    policy = _policy(case, args["steps"])
    result = {"lerobot": metadata.version("lerobot"), "torch": torch.__version__,
              "params": sum(p.numel() for p in policy.parameters())}
    policy.eval()
    obs = _batch(case, 1, torch, with_action=False)
    times = []
    with torch.no_grad():
        for i in range(args["chunks"] + 1):
            started = time.perf_counter()
            policy.diffusion.generate_actions(obs)
            if i:                                             # the first call warms up
                times.append(1000 * (time.perf_counter() - started))
    result["ms_per_chunk"] = times
    if args.get("train_batches"):
        policy.train()
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, weight_decay=1e-6)
        batch = _batch(case, args["batch_size"], torch, with_action=True)
        seconds = []
        for i in range(args["train_batches"] + 1):
            started = time.perf_counter()
            loss, _ = policy.forward(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i:
                seconds.append(time.perf_counter() - started)
        result["train_samples_per_s"] = [args["batch_size"] / s for s in seconds]
    return result


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
