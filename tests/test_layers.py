"""The library folders (policies, deploy, hardware, envs, datasets) never import the application
(the commands, benchmarks and their configs in cadence/), commands use one another only through
their entry functions, and no module imports itself in a ring."""
import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("cadence.policies", "cadence.deploy", "cadence.hardware", "cadence.envs", "cadence.datasets")
# What of cadence/ a library may use: errors and the bounded readers of untrusted files.
SHARED_CORE = ("cadence.errors", "cadence.untrusted")
# What one command may use of another: the function that does its whole job. Anything else a
# command holds that others need belongs in a library module (sim_eval, training_data, ...).
ENTRY_POINTS = {"cadence.collect": {"collect", "collect_missing"}, "cadence.train": {"train"},
                "cadence.finetune": {"finetune"}, "cadence.run": {"run"},
                "cadence.export": {"export_onnx", "export_control"}, "cadence.bench.success": {"bench_entry"}}


def _commands() -> set[str]:
    from cadence.cli import COMMANDS
    return {module for module, _, _ in COMMANDS.values()}


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name (pyproject's package-dir mapping)."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out = {}
    for package, folder in dirs.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    """Modules ``name`` imports (relative imports resolved; ``from pkg import mod`` counted as pkg.mod)."""
    tree = ast.parse(path.read_text())
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("cadence")}


def test_libraries_do_not_import_the_application():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        if not name.startswith(LIBRARIES):
            continue
        for target in _imports(name, path, top_level_only=False):
            if target in modules and not target.startswith(LIBRARIES + SHARED_CORE):
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, "\n".join(wrong)


def _names_taken(path: Path, module: str) -> set[str]:
    """The names ``path`` takes from ``module`` with ``from module import ...`` (``*`` for a plain import)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.Import) and any(a.name == module for a in node.names):
            names.add("*")
    return names


def test_commands_use_one_another_only_through_entry_functions():
    modules, commands = _modules(), _commands()
    wrong = []
    for name, path in modules.items():
        if name == "cadence.cli":
            continue
        for command in sorted(commands - {name}):
            extra = _names_taken(path, command) - ENTRY_POINTS.get(command, set())
            if extra:
                wrong.append(f"{path.relative_to(ROOT)} takes {sorted(extra)} from the command {command}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    modules = _modules()
    graph = {n: {t for t in _imports(n, p, top_level_only=True) if t in modules and t != n}
             for n, p in modules.items()}
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(" -> ".join(stack[stack.index(node):] + [node]))
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, "\n".join(cycles)


def test_the_check_sees_imports():
    """A test of the tests above: they read this repository's imports."""
    modules = _modules()
    assert "cadence.policies.processes.base" in modules and "cadence.cli" in modules
    assert "cadence.policies.processes.base" in _imports("cadence.policies.processes.ddpm",
                                                         modules["cadence.policies.processes.ddpm"], True)
    assert {"cadence.train", "cadence.bench.latency"} <= _commands()
    assert _names_taken(modules["cadence.demo"], "cadence.train") == {"train"}
