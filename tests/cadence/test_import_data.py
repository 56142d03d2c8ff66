"""cadence import: every format listed in --help; an option the chosen format does not take is refused."""
import pytest

from cadence.cli import main
from cadence.import_data import FORMATS, OPTIONS


@pytest.fixture()
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["cadence"])
    return main


def test_help_lists_every_format_and_its_options(cli, capsys):
    with pytest.raises(SystemExit):
        cli(["import", "--help"])
    text = capsys.readouterr().out
    assert set(OPTIONS) == set(FORMATS)
    for name, options in OPTIONS.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert all(option in line for option in options), (name, line)


@pytest.mark.parametrize("args, refused", [
    (["format=robomimic", "image_size=[84,84]"], "['image_size']"),
    (["format=lerobot", "replay=true", "topics={action: /cmd}"], "['replay', 'topics']"),
    (["format=rosbag", "missing_videos=skip", "fps=10", "topics={action: /cmd}"], "['missing_videos']"),
])
def test_an_option_of_another_format_is_refused_before_reading(cli, capsys, args, refused):
    with pytest.raises(SystemExit) as stop:
        cli(["import", "source=nowhere", "out=x.zarr", *args])
    assert stop.value.code == 1
    assert f"does not take {refused}" in capsys.readouterr().err
