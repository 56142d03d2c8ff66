"""``cadence bench peer``: cadence against LeRobot's ``DiffusionPolicy`` at identical math.

Each case (:mod:`cadence.bench.peer_cases`: PushT low-dim and PushT image, Diffusion Policy's UNet)
is built in both stacks with random weights. Every round runs the peer's worker
(:mod:`cadence.bench.peer_lerobot`, with the Python of LeRobot's own virtual environment, which
``make peer-env`` builds) and cadence's worker (:mod:`cadence.bench.peer_cadence`, every requested
runtime) as fresh processes, in alternating order, so neither stack always runs on a warmer or a
busier machine. Reported per case and sampler: the median batch-1 ms per chunk over all rounds,
the speedup over the peer, each cadence runtime's action error against its own fp32 eager with the
same start noise (max and mean, in % of the action range), and training samples/s at
``batch_size`` on the cases listed in ``train_cases``. Writes results.json + results.md.
"""
from __future__ import annotations

import json
import logging
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from cadence.bench.common import write_results
from cadence.bench.peer_cases import CASES, cadence_policy, chunks_for, obs_shapes, observation
from cadence.deploy.loop_graph import loop_step_counts
from cadence.deploy.runtime_selection import usable_kinds
from cadence.deploy.runtimes import LOOP_KINDS
from cadence.errors import CadenceError
from cadence.markdown_table import markdown_table

log = logging.getLogger(__name__)
PEER_SCRIPT = Path(__file__).with_name("peer_lerobot.py")
COLUMNS = ["case", "steps", "stack / runtime", "ms per chunk", "speedup vs peer", "max error %", "mean error %"]


class PeerError(CadenceError):
    """The peer's environment is missing or its worker failed."""


def check_peer(python: str) -> str:
    """The peer's ``lerobot`` version, or a one-line error naming how to build its environment."""
    if not Path(python).is_file():
        raise PeerError(f"peer_python={python}: not found; `make peer-env` builds LeRobot's virtual environment there")
    proc = subprocess.run([python, "-c", "from importlib.metadata import version; print(version('lerobot'))"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise PeerError(f"peer_python={python}: cannot import lerobot ({proc.stderr.strip().splitlines()[-1:]}); "
                        "`make peer-env` installs it")
    return proc.stdout.strip()


def _worker(command: list[str], what: str) -> dict:
    proc = subprocess.run(command, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise PeerError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return json.loads(lines[-1])


def case_spec(name: str, cfg: DictConfig) -> dict:
    if name not in CASES:
        raise PeerError(f"cases: unknown case {name!r}; cases: {sorted(CASES)}")
    return {**CASES[name], **({"down_dims": list(cfg.down_dims)} if cfg.down_dims else {})}


def _export(case: dict, cfg: DictConfig, out: Path, int8: bool, loop: bool) -> Path:
    """The case's policy exported; with ``int8``, its int8 denoiser fitted on windows other than the timed
    one; with ``loop``, its whole-loop graphs at the step counts that may have one."""
    from cadence.deploy.reduced_precision import CALIBRATION_WINDOWS, export_reduced
    from cadence.deploy.loop_export import export_loop
    from cadence.deploy.onnx_export import export_policy_onnx
    policy = cadence_policy(case, cfg.seed)
    export_policy_onnx(policy, out, obs_shapes=obs_shapes(case), echo=None)
    if loop and loop_step_counts(cfg.steps):
        log.info("exporting the whole-loop graphs of %s", out)
        export_loop(policy, out, loop_step_counts(cfg.steps), echo=None)
    if int8:
        windows = [observation(case, cfg.seed + 1 + i) for i in range(CALIBRATION_WINDOWS)]
        log.info("fitting the int8 steps of %s on %d windows", out, len(windows))
        export_reduced(policy, out, "int8", windows, steps=cfg.steps, max_error=cfg.int8_max_error,
                       threads=cfg.threads, echo=None)
    return out


def run(cfg: DictConfig) -> dict:
    out = Path(cfg.out_dir)
    cases = {name: case_spec(name, cfg) for name in cfg.cases}
    peer_version = check_peer(cfg.peer_python)
    runtimes = usable_kinds(list(cfg.runtimes))
    out.mkdir(parents=True, exist_ok=True)
    exports = {name: str(_export(case, cfg, out / f"onnx-{name}", "onnx-cpu-int8" in runtimes,
                                 any(k in LOOP_KINDS for k in runtimes)))
               if any(k.startswith("onnx") for k in runtimes) else None for name, case in cases.items()}
    samples: dict[str, dict] = {name: {"peer": {}, "cadence": {}, "peer_train": [], "cadence_train": [],
                                       "errors": {}} for name in cases}
    info: dict[str, dict] = {}
    for round_ in range(cfg.rounds):
        for name, case in cases.items():
            train = cfg.train_batches if name in cfg.train_cases else 0
            common = {"case": case, "chunks": cfg.chunks, "threads": cfg.threads, "seed": cfg.seed,
                      "train_batches": train, "batch_size": cfg.batch_size}
            peer = lambda: [_worker([cfg.peer_python, "-I", str(PEER_SCRIPT),  # noqa: E731
                                     json.dumps({**common, "steps": s, "chunks": chunks_for(s, cfg.chunks),
                                                 "train_batches": train if s == cfg.steps[0] else 0})],
                                    f"the peer's worker ({name}, {s} steps)") for s in cfg.steps]
            ours = lambda: [_worker([sys.executable, "-m", "cadence.bench.peer_cadence", json.dumps(  # noqa: E731
                {**common, "steps": list(cfg.steps), "runtimes": runtimes, "export_dir": exports[name]})],
                f"cadence's worker ({name})")]
            jobs = [("peer", peer), ("cadence", ours)]
            for stack, job in (jobs if round_ % 2 == 0 else jobs[::-1]):
                log.info("round %d/%d: %s on %s", round_ + 1, cfg.rounds, stack, name)
                results = job()
                _collect(samples[name], info, stack, results, list(cfg.steps), name)
    result = {"machine": {"cpu": _cpu_name(), "threads": cfg.threads},
              "versions": {"lerobot": peer_version, **info.get("versions", {})},
              "params": info.get("params", {}), "rounds": cfg.rounds, "chunks_per_round": cfg.chunks,
              "cases": cases, "rows": _rows(samples, list(cfg.steps)), "training": _training(samples)}
    if "onnx-cpu-int8" in runtimes:     # the fitted int8 steps: "10": 4 = int8 for the last 4 of 10
        from cadence.deploy.export_spec import read_spec
        result["int8_last_steps"] = {name: read_spec(path)["int8"]["last_steps"] for name, path in exports.items()}
    write_results(out, result, format_report(result))
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _collect(into: dict, info: dict, stack: str, results: list[dict], steps: list[int], case: str) -> None:
    versions, params = info.setdefault("versions", {}), info.setdefault("params", {}).setdefault(case, {})
    if stack == "peer":
        for s, r in zip(steps, results):
            into["peer"].setdefault(s, []).extend(r["ms_per_chunk"])
            into["peer_train"].extend(r.get("train_samples_per_s", []))
            versions["peer_torch"], params["peer"] = r["torch"], r["params"]
        return
    (r,) = results
    for row in r["rows"]:
        key = (row["runtime"], row["steps"])
        into["cadence"].setdefault(key, []).extend(row["ms_per_chunk"])
        old = into["errors"].get(key, (0.0, 0.0))
        into["errors"][key] = (max(old[0], row["max_error"]), max(old[1], row["mean_error"]))
    into["cadence_train"].extend(r.get("train_samples_per_s", []))
    versions["cadence"], versions["cadence_torch"], params["cadence"] = r["cadence"], r["torch"], r["params"]


def _rows(samples: dict, steps: list[int]) -> list[dict]:
    rows = []
    for name, s in samples.items():
        for n in steps:
            peer_ms = statistics.median(s["peer"][n])
            rows.append({"case": name, "steps": n, "stack": "lerobot", "runtime": "DiffusionPolicy (torch eager)",
                         "ms_per_chunk": peer_ms, "speedup": 1.0, "max_error": None, "mean_error": None})
            for (kind, k), times in s["cadence"].items():
                if k == n:
                    ms = statistics.median(times)
                    rows.append({"case": name, "steps": n, "stack": "cadence", "runtime": kind, "ms_per_chunk": ms,
                                 "speedup": peer_ms / ms, "max_error": s["errors"][(kind, k)][0],
                                 "mean_error": s["errors"][(kind, k)][1]})
    return rows


def _training(samples: dict) -> list[dict]:
    rows = []
    for name, s in samples.items():
        if s["peer_train"] and s["cadence_train"]:
            peer, ours = statistics.median(s["peer_train"]), statistics.median(s["cadence_train"])
            rows.append({"case": name, "peer_samples_per_s": peer, "cadence_samples_per_s": ours,
                         "ratio": ours / peer})
    return rows


def format_report(result: dict) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.3f}"  # noqa: E731
    cells = [[r["case"], str(r["steps"]), f"{r['stack']} {r['runtime']}", f"{r['ms_per_chunk']:.1f}",
              f"{r['speedup']:.2f}x", pct(r["max_error"]), pct(r["mean_error"])] for r in result["rows"]]
    text = markdown_table(COLUMNS, cells)
    if result["training"]:
        text += "\n\n" + markdown_table(
            ["case", "training samples/s, lerobot", "cadence", "ratio"],
            [[t["case"], f"{t['peer_samples_per_s']:.1f}", f"{t['cadence_samples_per_s']:.1f}", f"{t['ratio']:.2f}x"]
             for t in result["training"]])
    v = result["versions"]
    params = ", ".join(f"{case} {p.get('peer', 0) / 1e6:.1f}M vs {p.get('cadence', 0) / 1e6:.1f}M"
                       for case, p in result["params"].items())
    return (text + f"\n\nlerobot {v['lerobot']} (torch {v.get('peer_torch')}) vs cadence {v.get('cadence')} "
            f"(torch {v.get('cadence_torch')}); parameters {params}; batch 1, {result['machine']['threads']} "
            f"threads, {result['rounds']} rounds x {result['chunks_per_round']} chunks, median; error: cadence "
            "runtime vs its own fp32 eager, same start noise, % of the action range"
            + "".join(f"; {case} int8: the last {j} of {steps} steps" for case, fits in
                      result.get("int8_last_steps", {}).items() for steps, j in fits.items()))
