"""pyproject.toml lists every package folder and every config group, so a wheel install is complete."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_python_folder_is_a_listed_package():
    tool = _setuptools()
    listed = set(tool["packages"])
    for name, folder in tool["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            package = ".".join([name, *rel.parts])
            assert package in listed, f"{init.parent}: package {package} missing from [tool.setuptools] packages"


def test_every_config_group_ships_its_yaml():
    data = _setuptools()["package-data"]
    for folder in [ROOT / "configs", *(p for p in (ROOT / "configs").iterdir() if p.is_dir())]:
        if any(folder.glob("*.yaml")):
            package = ".".join(["cadence.configs", *folder.relative_to(ROOT / "configs").parts])
            assert data.get(package) == ["*.yaml"], f"{folder}: {package} has no package-data entry"
