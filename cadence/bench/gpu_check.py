"""``make gpu-check``: every GPU path's parity and latency in one run, one JSON.

On a machine with a CUDA GPU it times each runtime kind that needs one (ONNX Runtime's CUDA, per
denoiser call, with the float16 denoiser for its fitted last steps, and the whole loop as one graph;
TensorRT through ONNX Runtime, fp32 and float16, where TensorRT's library is installed, else the
row says why it was skipped; torch.compile; CUDA graphs of one call and of the whole loop; fp16;
bf16) on the
low-dim PushT network of ``cadence bench peer`` (Diffusion Policy's UNet, random weights) at
DDIM-10, batch 1, against fp32 eager PyTorch on the CPU with the same start noise, and runs the
NCCL training step through ``cadence bench scale`` on the default task. A check that fails is
recorded with its error; the others still run. Without a GPU it prints what it would run and
exits 0.

    python -m cadence.bench.gpu_check [--out gpu-check.json] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUNTIME_KINDS = ("torch-eager", "torch-compile", "torch-cudagraph", "torch-cudagraph-loop", "torch-fp16", "torch-bf16",
                 "onnx-cuda", "onnx-cuda-fp16", "onnx-cuda-loop", "onnx-tensorrt", "onnx-tensorrt-fp16",
                 "onnx-tensorrt-int8")
STEPS, CHUNKS = 10, 20


def plan() -> list[str]:
    """What a run checks, one line each (what the dry run prints)."""
    return [*(f"runtime {k}: DDIM-{STEPS} chunk, batch 1, {CHUNKS} timed, action error vs CPU fp32 eager"
              for k in RUNTIME_KINDS),
            "the float16 denoiser's last steps fitted on the GPU, the QDQ int8 one's on the CPU (0.5% of the "
            "action range, 8 windows) first",
            "nccl: `cadence bench scale` on the default task, one process per GPU (up to 2), fp32 and bf16"]


def _runtime_rows(out: Path) -> list[dict]:
    from cadence.bench.peer_cadence import chunk_ms
    from cadence.bench.peer_cases import CASES, cadence_policy, observation
    from cadence.deploy.budget import action_range
    from cadence.deploy.loop_export import export_loop
    from cadence.deploy.onnx_export import export_policy_onnx
    from cadence.deploy.onnx_providers import tensorrt_unavailable_reason
    from cadence.deploy.reduced_precision import export_reduced
    from cadence.deploy.runtimes import build_runtime

    case = CASES["lowdim"]
    policy = cadence_policy(case, 0)
    export = export_policy_onnx(policy, out / "onnx-lowdim", echo=None)
    export_loop(policy, export, [STEPS], echo=None)         # onnx-cuda-loop: the whole DDIM-10 loop, one graph
    windows = [observation(case, 1 + i) for i in range(8)]
    export_reduced(policy, export, "fp16", windows, steps=[STEPS], provider="cuda", echo=print)   # the GPU's numbers
    export_reduced(policy, export, "int8_qdq", windows, steps=[STEPS], echo=print)
    obs = observation(case, 0)
    noise = np.random.default_rng(0).standard_normal((1, case["pred_horizon"], case["action_dim"])).astype(np.float32)
    reference = build_runtime("torch-eager", policy, sample_steps=STEPS, device="cpu").predict(obs, noise)
    scale = action_range(policy)
    rows = []

    def row(name: str, build) -> None:
        started = time.perf_counter()
        try:
            runtime = build()
            first = runtime.predict(obs, noise)                  # compiles / captures; numpy out: synchronized
            times = chunk_ms(runtime, obs, noise, CHUNKS)
            error = np.abs(first - reference) / scale
            rows.append({"check": name, "ok": bool(np.isfinite(first).all()), "ms_per_chunk_p50": statistics.median(times),
                         "max_error": float(error.max()), "mean_error": float(error.mean()),
                         "seconds": time.perf_counter() - started})
        except Exception as exc:           # noqa: BLE001 (a failing path is a finding, not the end of the run)
            rows.append({"check": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500],
                         "seconds": time.perf_counter() - started})
        print(json.dumps(rows[-1]), flush=True)

    trt_missing = tensorrt_unavailable_reason()
    for kind in RUNTIME_KINDS:
        if kind.startswith("onnx-tensorrt") and trt_missing:
            rows.append({"check": kind, "ok": True, "skipped": trt_missing})
            print(json.dumps(rows[-1]), flush=True)
            continue
        row(kind, lambda k=kind: build_runtime(k, policy, export, STEPS, "cuda"))
    return rows


def _nccl_row(out: Path) -> dict:
    import torch

    started = time.perf_counter()
    processes = [1, 2] if torch.cuda.device_count() > 1 else [1]
    command = [sys.executable, "-m", "cadence.cli", "bench", "scale", "device=cuda", "steps=60",
               f"processes={processes}", "precisions=[fp32,bf16]", f"out_dir={out / 'scale'}"]
    proc = subprocess.run(command, capture_output=True, text=True)
    row = {"check": "nccl", "ok": proc.returncode == 0, "command": " ".join(command),
           "seconds": time.perf_counter() - started}
    if proc.returncode == 0:
        result = json.loads((out / "scale" / "results.json").read_text())
        row.update(gpu=result["gpu"], rows=result["rows"])
    else:
        row["error"] = proc.stderr.strip()[-1500:]
    print(json.dumps({k: v for k, v in row.items() if k != "rows"}), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.json", help="where the JSON goes")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    args = parser.parse_args(argv)
    import torch

    if args.dry_run or not torch.cuda.is_available():
        reason = "dry run" if args.dry_run else "no CUDA GPU here (torch.cuda.is_available() is False)"
        print(f"gpu-check: {reason}; on a GPU machine it would run:")
        print("\n".join(f"  - {line}" for line in plan()))
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = _runtime_rows(Path(tmp))
        rows.append(_nccl_row(Path(tmp)))
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "seconds": time.perf_counter() - started,
              "checks": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    failed = [r["check"] for r in rows if not r["ok"]]
    print(f"gpu-check: {len(rows) - len(failed)}/{len(rows)} passed in {result['seconds']:.0f} s"
          + (f"; failed: {failed}" if failed else "") + f" -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
