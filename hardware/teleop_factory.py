"""The teleoperator ``teleop.source`` names (``scripted``, ``leader``, ``keyboard``, ``gamepad``,
or ``package.module:ClassName``), built with ``teleop.options`` like a robot driver."""
from __future__ import annotations

from cadence.hardware.robot_factory import build_driver, check_class_name

TELEOP_PATHS = {
    "scripted": "cadence.hardware.scripted_teleop:ScriptedTeleop",
    "leader": "cadence.hardware.so101:SO101Leader",
    "keyboard": "cadence.hardware.keyboard_teleop:KeyboardTeleop",
    "gamepad": "cadence.hardware.gamepad_teleop:GamepadTeleop",
}
TELEOP_METHODS = ("connect", "reset", "action", "disconnect")


def make_teleop(teleop_cfg, task_cfg, keys=None):
    """``keys`` (a :class:`~cadence.hardware.terminal_keys.TerminalKeys`) is shared with the
    keyboard teleop, so the record keys and the teleop read one terminal."""
    source = str(teleop_cfg.source)
    check_class_name(source, TELEOP_PATHS, "teleop.source")
    options = dict(teleop_cfg.options or {})
    if source == "scripted":
        options.setdefault("expert", task_cfg.expert)
    if source == "keyboard" and keys is not None:
        options.setdefault("keys", keys)
    return build_driver(TELEOP_PATHS.get(source, source), options, TELEOP_METHODS, what="teleop.source")
