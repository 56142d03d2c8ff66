"""The ``cadence`` command: ``cadence <command> [key=value ...]``, each command a Hydra app.

``--plugin MODULE`` (repeatable) imports a module of the user's first, e.g. one that registers a
process of their own (``docs/extending.md``).

``cadence <command> --help`` lists the command's config groups and its full config.
"""
from __future__ import annotations

import importlib
import logging
import sys

from cadence.envs.rendering import choose_gl_backend

COMMANDS = {
    "collect": ("cadence.collect", "collect", "write scripted-expert demonstrations into an episode store"),
    "train": ("cadence.train", "train", "train a policy on an episode store"),
    "eval": ("cadence.evaluate", "eval", "evaluate a checkpoint in simulation"),
    "demo": ("cadence.demo", "demo", "collect, train diffusion / flow / regression, evaluate, report"),
    "record": ("cadence.record", "record", "record teleoperated demonstrations (leader arm, keyboard, gamepad) into an episode store"),
    "import": ("cadence.import_data", "import", "import a dataset (robomimic / Isaac Lab / robosuite HDF5, LeRobot, ROS 2 bags) into an episode store"),
    "finetune": ("cadence.finetune", "finetune", "RL fine-tuning in simulation: ReinFlow (flow / shortcut), DPPO-style (DDPM)"),
    "cache": ("cadence.cache", "cache", "calibrate block-wise caching (BAC) of a transformer policy, saved beside it"),
    "verifier train": ("cadence.verifier_train", "verifier_train", "train the value verifier of inference-time search on a policy's candidates in simulation"),
    "export": ("cadence.export", "export", "export a checkpoint as ONNX graphs + policy.json"),
    "run": ("cadence.run", "run", "drive a robot (simulated or remote) in real time under a latency budget"),
    "task init": ("cadence.task_init", "task_init", "write a task YAML for your own episode store (no simulator)"),
    "robot serve": ("cadence.robot_serve", "robot_serve", "serve a robot driver (default: simulated) over the network"),
    "robot calibrate": ("cadence.robot_calibrate", "robot_calibrate", "calibrate an SO-100/SO-101 arm (LeRobot's JSON)"),
    "robot check": ("cadence.robot_check", "robot_check", "conformance run on a robot driver (read-only unless --move)"),
    "bench latency": ("cadence.bench.latency", "bench_latency", "latency of every policy / runtime / step count"),
    "bench loop": ("cadence.bench.loop", "bench_loop", "closed loop over the network vs offline evaluation"),
    "bench success": ("cadence.bench.success", "bench_success", "train or load policies on several tasks, one success table"),
    "bench cache": ("cadence.bench.cache", "bench_cache", "BAC vs uniform caching vs no cache: ms, FLOPs, action error, success"),
    "bench offline": ("cadence.bench.offline", "bench_offline", "offline validation vs rollout score per checkpoint; import frames/s"),
    "bench record": ("cadence.bench.record", "bench_record", "recorded (teleop, real time) vs collected demonstrations: the same policy trained on each"),
    "bench mode": ("cadence.bench.mode", "bench_mode", "dense transformer vs MoDE, uncached and expert-cached"),
    "bench anchor": ("cadence.bench.anchor", "bench_anchor", "truncated anchor diffusion at 1-4 steps vs DDIM-10/20"),
    "bench streaming": ("cadence.bench.streaming", "bench_streaming", "streaming diffusion replans vs DDPM-100 / DDIM-10"),
    "bench scale": ("cadence.bench.scale", "bench_scale", "training samples/s with 1, 2, ... torchrun processes"),
    "bench eval": ("cadence.bench.eval", "bench_eval", "evaluation wall time: one process vs waves vs async envs vs ranks"),
    "bench finetune": ("cadence.bench.finetune", "bench_finetune", "ReinFlow (flow, shortcut) vs DPPO-style vs no fine-tuning"),
    "bench peer": ("cadence.bench.peer", "bench_peer", "cadence vs LeRobot's DiffusionPolicy at identical math: ms per chunk, action error, training samples/s"),
    "bench search": ("cadence.bench.search", "bench_search", "inference-time search: success against K candidates per verifier, beside more steps"),
    "bench server": ("cadence.bench.server", "bench_server", "robot server under attack: valid round trips, peak RSS"),
}
GROUPS = {name.split()[0] for name in COMMANDS if " " in name}
# Free-form maps: a key given on the command line is added or overridden without Hydra's '+'.
FREE_FORM = ("robot.options.", "robot.cameras.", "teleop.options.")
FLAGS = {"--move": "check.move=true"}   # `cadence robot check --move`

USAGE = "usage: cadence <command> [key=value ...] [--plugin MODULE] [--help]\n\ncommands:\n" + "".join(
    f"  {name:<14} {doc}\n" for name, (_, _, doc) in COMMANDS.items())


def _reporting_errors(command: str, run):
    """The config's open choices are checked first; refused input (any ``CadenceError``) ends the
    command with its one-line message (exit 1) instead of a traceback."""
    import functools

    from cadence.errors import CadenceError
    from cadence.open_choices import check_open_choices

    @functools.wraps(run)
    def wrapped(cfg):
        try:
            check_open_choices(cfg)
            return run(cfg)
        except CadenceError as exc:
            print(f"cadence {command}: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
    return wrapped


def _hydra_override(arg: str) -> str:
    if arg in FLAGS:
        return FLAGS[arg]
    return "++" + arg if arg.startswith(FREE_FORM) and "=" in arg else arg


def _plugins(args: list[str]) -> tuple[list[str], list[str]]:
    """Split ``--plugin MODULE`` / ``--plugin=MODULE`` (repeatable) off the arguments."""
    plugins, rest, it = [], [], iter(args)
    for arg in it:
        if arg == "--plugin":
            plugins.append(next(it, ""))
        elif arg.startswith("--plugin="):
            plugins.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return plugins, rest


def load_plugins(names: list[str]) -> None:
    """Import the user's own modules (a process, a network...) named on the command line; the
    current directory is importable. Recorded in ``CADENCE_PLUGINS`` so that worker processes
    and processes restored from a checkpoint find them too."""
    import os

    from cadence.errors import CadenceError
    if not names:
        return
    if "" not in sys.path:
        sys.path.insert(0, "")
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:   # noqa: BLE001 - any failure of the user's module, in one line
            raise CadenceError(f"--plugin {name!r}: cannot import it ({type(exc).__name__}: {exc})") from None
    known = [n for n in os.environ.get("CADENCE_PLUGINS", "").split(",") if n]
    os.environ["CADENCE_PLUGINS"] = ",".join(dict.fromkeys([*known, *names]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    plugins, argv = _plugins(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    words = 2 if argv[0] in GROUPS and len(argv) > 1 and not argv[1].startswith("-") else 1
    command, rest = " ".join(argv[:words]), argv[words:]
    if command not in COMMANDS:
        print(f"cadence: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        load_plugins(plugins)
    except Exception as exc:   # noqa: BLE001
        print(f"cadence {command}: error: {exc}", file=sys.stderr)
        return 2
    choose_gl_backend()
    logging.getLogger("OpenGL").setLevel(logging.WARNING)   # PyOpenGL's import chatter
    import hydra

    from cadence.config_store import register

    register()
    module_name, config_name, _ = COMMANDS[command]
    module = importlib.import_module(module_name)
    app = hydra.main(version_base="1.3", config_path="pkg://cadence.configs",
                     config_name=config_name)(_reporting_errors(command, module.run))
    sys.argv = [f"cadence {command}", *(_hydra_override(arg) for arg in rest)]
    app()
    return 0


if __name__ == "__main__":
    sys.exit(main())
