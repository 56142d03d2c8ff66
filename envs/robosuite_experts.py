"""Scripted experts for the robosuite tasks (:mod:`cadence.envs.robosuite_tasks`).

Each is a small state machine over ground-truth poses read from the simulator (object, nut
handle site, pegs, bins). Every step it servos the end effector towards a target position
and a "gripper pointing down, rotated by yaw" orientation with delta OSC actions
proportional to the errors (clipped to [-1, 1]) and holds the gripper open or closed.
Diversity comes from seeded Gaussian action noise and a few per-episode offsets (hover
height, speed, grasp height). A grasp that loses its object goes back to reaching for it.

Use: ``expert = make_expert("lift", seed)``; per episode ``expert.reset(env.unwrapped)``,
then ``action = expert.act()`` before each ``env.step(action)``.
"""
from __future__ import annotations

import numpy as np

POS_SCALE = 0.05     # metres per unit of position action (robosuite's OSC output_max)
ROT_SCALE = 0.5      # radians per unit of rotation action
OPEN, CLOSE = -1.0, 1.0
# eef site axes when the gripper points straight down at yaw 0: x = world y (the fingers
# close along it), y = world x, z = down
R_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotvec(matrix: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix."""
    cos = np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-8:
        return np.zeros(3)
    axis = np.array([matrix[2, 1] - matrix[1, 2], matrix[0, 2] - matrix[2, 0], matrix[1, 0] - matrix[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-8:     # angle ~ pi: axis from the symmetric part
        axis = np.sqrt(np.maximum(np.diag(matrix) + 1.0, 0.0) / 2.0)
        norm = np.linalg.norm(axis)
    return axis / norm * angle


def wrap(angle: float, period: float) -> float:
    """``angle`` shifted by multiples of ``period`` into [-period/2, period/2)."""
    return (angle + period / 2.0) % period - period / 2.0


def yaw_of(matrix: np.ndarray) -> float:
    """Heading of a body's x axis in the world's horizontal plane."""
    return float(np.arctan2(matrix[1, 0], matrix[0, 0]))


class ScriptedExpert:
    """Shared servoing; subclasses implement :meth:`_plan` (target pos, yaw, gripper)."""

    def __init__(self, seed: int | None = None, noise: float = 0.05):
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        self.env = None

    # --- episode -------------------------------------------------------------------------
    def reset(self, env) -> None:
        """``env``: the unwrapped :class:`~cadence.envs.robosuite_tasks.RobosuiteTask`."""
        self.env = env
        self.rs = env.robosuite_env
        self.sim = self.rs.sim
        robot = self.rs.robots[0]
        self._eef_site = robot.eef_site_id["right"]
        self._finger_joints = list(robot._ref_gripper_joint_pos_indexes["right"])
        self._last_width = self._width = self.finger_width
        self.phase = "reach"
        self.phase_steps = 0
        self.steps = 0
        self.gain = self.rng.uniform(2.0, 3.0)        # position gain: speed of this episode
        self._setup()

    def _setup(self) -> None:
        pass

    def act(self) -> np.ndarray:
        if self.env is None:
            raise RuntimeError("call reset(env) before act()")
        self._last_width, self._width = self._width, self.finger_width
        target, yaw, gripper = self._plan()
        action = self._servo(target, yaw, gripper)
        self.steps += 1
        self.phase_steps += 1
        return action

    def _goto(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0

    # --- state -------------------------------------------------------------------------
    @property
    def eef_pos(self) -> np.ndarray:
        return self.sim.data.site_xpos[self._eef_site].copy()

    @property
    def eef_mat(self) -> np.ndarray:
        return self.sim.data.site_xmat[self._eef_site].reshape(3, 3).copy()

    @property
    def gripper_yaw(self) -> float:
        """Yaw of the gripper (0 when its site's x axis points along world y)."""
        x_axis = self.eef_mat[:, 0]
        return float(np.arctan2(-x_axis[0], x_axis[1]))

    @property
    def finger_width(self) -> float:
        """Opening of the fingers (about 0.08 m open, 0 closed on nothing)."""
        left, right = self.sim.data.qpos[self._finger_joints]
        return float(left - right)

    def gripper_settled(self, min_steps: int = 6, max_steps: int = 20) -> bool:
        """The fingers have stopped moving in this phase (the gripper action ramps over
        ten steps, then the fingers travel)."""
        if self.phase_steps >= max_steps:
            return True
        return self.phase_steps >= min_steps and abs(self._width - self._last_width) < 5e-4

    @property
    def gripper_open(self) -> bool:
        return self._width > 0.07

    def body_pos(self, body_id: int) -> np.ndarray:
        return self.sim.data.body_xpos[body_id].copy()

    def body_mat(self, body_id: int) -> np.ndarray:
        return self.sim.data.body_xmat[body_id].reshape(3, 3).copy()

    def near(self, target: np.ndarray, xy: float, z: float | None = None) -> bool:
        err = target - self.eef_pos
        return bool(np.linalg.norm(err[:2]) < xy and abs(err[2]) < (xy if z is None else z))

    def yaw_close(self, yaw: float, tol: float = 0.08) -> bool:
        return abs(wrap(yaw - self.gripper_yaw, 2 * np.pi)) < tol

    # --- control -----------------------------------------------------------------------
    def _servo(self, target: np.ndarray, yaw: float, gripper: float) -> np.ndarray:
        action = np.zeros(7)
        action[:3] = self.gain * (target - self.eef_pos) / POS_SCALE
        rot_error = rotvec(rot_z(yaw) @ R_DOWN @ self.eef_mat.T)
        action[3:6] = 2.0 * rot_error / ROT_SCALE
        action[:6] += self.rng.normal(0.0, self.noise, 6)
        action[:6] = np.clip(action[:6], -1.0, 1.0)
        action[6] = gripper
        return action.astype(np.float32)

    def _plan(self) -> tuple[np.ndarray, float, float]:
        raise NotImplementedError


class LiftExpert(ScriptedExpert):
    """Above the cube, down, close, lift (the task ends once the cube is 4 cm up)."""

    def _setup(self):
        self.cube = self.rs.cube_body_id
        self.hover = self.rng.uniform(0.06, 0.10)
        self.grasp_dz = self.rng.uniform(-0.005, 0.005)

    def _plan(self):
        cube = self.body_pos(self.cube)
        # fingers square to the cube's faces; of the four equivalent yaws, the nearest to 0
        yaw = wrap(yaw_of(self.body_mat(self.cube)), np.pi / 2)
        if self.phase == "reach":
            target = cube + [0.0, 0.0, self.hover]
            if (self.near(target, 0.01, 0.02) and self.yaw_close(yaw) and self.gripper_open) or self.phase_steps > 60:
                self._goto("descend")
            return target, yaw, OPEN
        if self.phase == "descend":
            target = cube + [0.0, 0.0, self.grasp_dz]
            if self.near(target, 0.008, 0.008) or self.phase_steps > 40:
                self._goto("grasp")
                self._grasp_pos = self.eef_pos
            return target, yaw, OPEN
        if self.phase == "grasp":
            if self.gripper_settled():
                self._goto("lift")
            return self._grasp_pos, yaw, CLOSE
        # lift; if the cube stays behind, start over
        if self.phase_steps > 10 and np.linalg.norm(cube - self.eef_pos) > 0.04:
            self._goto("reach")
            return self.eef_pos, yaw, OPEN
        return self._grasp_pos + [0.0, 0.0, 0.2], yaw, CLOSE


class CanExpert(ScriptedExpert):
    """Grasp the can from above, lift it over the bin walls, carry it above its compartment
    of the target bin, lower, release, move up (success needs the gripper off the can)."""

    CARRY_Z = 1.0           # eef height while carrying (walls end at z = 0.9; the can hangs 5 cm below)

    def _setup(self):
        self.can = self.rs.obj_body_id["Can"]
        # the compartment's corner nearest the robot (its far corner is at the arm's reach)
        bin_x, bin_y, bin_z = self.rs.bin2_pos
        self.goal = np.array([bin_x + self.rng.uniform(0.06, 0.10), bin_y + self.rng.uniform(0.06, 0.10), bin_z])
        self.hover = self.rng.uniform(0.08, 0.12)
        self.grasp_dz = self.rng.uniform(0.0, 0.015)
        self.yaw = self.rng.uniform(-0.3, 0.3)

    def _plan(self):
        can, eef, yaw = self.body_pos(self.can), self.eef_pos, self.yaw
        if self.phase in ("lift", "carry", "lower") and np.linalg.norm(can - eef) > 0.06:
            self._goto("reach")            # dropped it: start over
        if self.phase == "reach":
            target = can + [0.0, 0.0, self.hover]
            if (self.near(target, 0.01, 0.02) and self.gripper_open) or self.phase_steps > 80:
                self._goto("descend")
            return target, yaw, OPEN
        if self.phase == "descend":
            target = can + [0.0, 0.0, self.grasp_dz]
            if self.near(target, 0.008, 0.008) or self.phase_steps > 40:
                self._goto("grasp")
                self._hold = eef
            return target, yaw, OPEN
        if self.phase == "grasp":
            if self.gripper_settled():
                self._goto("lift")
            return self._hold, yaw, CLOSE
        offset = eef - can                 # where the gripper holds the can
        if self.phase == "lift":
            if eef[2] > self.CARRY_Z - 0.03:
                self._goto("carry")
            return np.array([self._hold[0], self._hold[1], self.CARRY_Z + 0.02]), yaw, CLOSE
        above_goal = np.array([self.goal[0] + offset[0], self.goal[1] + offset[1], self.CARRY_Z])
        if self.phase == "carry":
            if np.linalg.norm(can[:2] - self.goal[:2]) < 0.015 or self.phase_steps > 120:
                self._goto("lower")
            return above_goal, yaw, CLOSE
        if self.phase == "lower":
            release_z = self.goal[2] + 0.095       # can centre 1.5 cm above resting on the floor
            if can[2] < release_z or self.phase_steps > 60:
                self._goto("release")
                self._hold = eef
            return above_goal - [0.0, 0.0, self.CARRY_Z - release_z + 0.02], yaw, CLOSE
        if self.phase == "release":
            if self.gripper_settled(min_steps=4):
                self._goto("retreat")
            return self._hold, yaw, OPEN
        return self._hold + [0.0, 0.0, 0.15], yaw, OPEN


class SquareExpert(ScriptedExpert):
    """Grasp the square nut by its handle, lift it above the peg, turn it square to the peg,
    bring its centre over the peg, lower it down the peg, release, move up."""

    CARRY_Z = 1.0           # nut height while carrying (the peg's top is at z = 0.95)
    # nut yaws square to the peg with the handle towards the robot or sideways: with the
    # handle pointing away (yaw 0) the gripper would be at the edge of the arm's reach
    NUT_YAWS = (np.pi, np.pi / 2, -np.pi / 2)
    GRIPPER_YAW_RANGE = (-1.9, 3.0)    # keeps the wrist joint (q7 ~ 0.9 - yaw) inside its limits

    def _setup(self):
        self.nut = self.rs.obj_body_id["SquareNut"]
        self.handle = self.sim.model.site_name2id(self.rs.nuts[self.rs.nut_id].important_sites["handle"])
        self.peg = self.rs.peg1_body_id
        self.table_z = float(self.rs.table_offset[2])
        self.hover = self.rng.uniform(0.06, 0.10)
        self.grasp_dz = self.rng.uniform(0.0, 0.01)
        self._nut_goal_yaw = np.pi

    def _choose_nut_yaw(self, nut_yaw: float) -> float:
        """The allowed final nut yaw reached by the smallest turn the wrist can make."""
        lo, hi = self.GRIPPER_YAW_RANGE
        turns = [wrap(goal - nut_yaw, 2 * np.pi) for goal in self.NUT_YAWS]
        feasible = [t for t in turns if lo <= self.gripper_yaw + t <= hi] or turns
        return nut_yaw + min(feasible, key=abs)

    def _plan(self):
        nut, eef = self.body_pos(self.nut), self.eef_pos
        handle = self.sim.data.site_xpos[self.handle].copy()
        nut_yaw = yaw_of(self.body_mat(self.nut))
        if self.phase in ("lift", "align", "lower") and np.linalg.norm(handle - eef) > 0.05:
            self._goto("reach")            # dropped it: start over
        if self.phase in ("reach", "descend"):
            # fingers across the handle: gripper yaw = nut yaw (mod pi), nearest to the current
            yaw = self.gripper_yaw + wrap(nut_yaw - self.gripper_yaw, np.pi)
            if self.phase == "reach":
                target = handle + [0.0, 0.0, self.hover]
                if (self.near(target, 0.01, 0.02) and self.yaw_close(yaw, 0.06) and self.gripper_open) \
                        or self.phase_steps > 100:
                    self._goto("descend")
                return target, yaw, OPEN
            target = handle + [0.0, 0.0, self.grasp_dz]
            if self.near(target, 0.006, 0.006) or self.phase_steps > 40:
                self._goto("grasp")
                self._hold, self._yaw = eef, yaw
            return target, yaw, OPEN
        if self.phase == "grasp":
            if self.gripper_settled():
                self._goto("lift")
            return self._hold, self._yaw, CLOSE
        # carrying: turn the nut square to the peg and servo its centre over the peg
        yaw = self.gripper_yaw + wrap(self._nut_goal_yaw - nut_yaw, 2 * np.pi)
        peg = self.body_pos(self.peg)
        shift = np.array([peg[0] - nut[0], peg[1] - nut[1], 0.0])
        if self.phase == "lift":
            if nut[2] > self.CARRY_Z - 0.02:
                self._goto("align")
                self._nut_goal_yaw = self._choose_nut_yaw(nut_yaw)
            return np.array([self._hold[0], self._hold[1], eef[2] + self.CARRY_Z + 0.02 - nut[2]]), self._yaw, CLOSE
        if self.phase == "align":
            target = eef + shift + [0.0, 0.0, self.CARRY_Z - nut[2]]
            yaw_error = wrap(self._nut_goal_yaw - nut_yaw, 2 * np.pi)
            if (np.linalg.norm(shift[:2]) < 0.004 and abs(yaw_error) < 0.05) or self.phase_steps > 120:
                self._goto("lower")
            return target, yaw, CLOSE
        if self.phase == "lower":
            release_z = self.table_z + 0.03
            target = eef + shift + [0.0, 0.0, release_z - 0.01 - nut[2]]
            if nut[2] < release_z or self.phase_steps > 60:
                self._goto("release")
                self._hold = eef
            return target, yaw, CLOSE
        if self.phase == "release":
            if self.gripper_settled(min_steps=4):
                self._goto("retreat")
            return self._hold, self.gripper_yaw, OPEN
        return self._hold + [0.0, 0.0, 0.15], self.gripper_yaw, OPEN


EXPERT_CLASSES = {"lift": LiftExpert, "can": CanExpert, "square": SquareExpert}


def make_expert(task: str, seed: int | None = None, noise: float = 0.05) -> ScriptedExpert:
    if task not in EXPERT_CLASSES:
        raise ValueError(f"no scripted robosuite expert for {task!r} (have {list(EXPERT_CLASSES)})")
    return EXPERT_CLASSES[task](seed=seed, noise=noise)
