"""Motion: how people move over time, for the action classes and for the anomaly scenes.

Everything here is a function of the frame index ``t`` and parameters drawn once from a
seeded generator, so any frame can be rendered on its own and reruns are identical.
Actions and anomalies differ only in motion and pose, never in appearance: the same
:class:`~aux_code.synthetic.people.Look` can perform any of them.

Gaits are written for a figure facing +x; ``FigureState.facing`` mirrors them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .people import FigureState, Pose

TWO_PI = 2.0 * math.pi
Program = Callable[[int], "FigureState | None"]


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3.0 - 2.0 * x)


def bounce(x0: float, speed: float, direction: int, t: float, lo: float, hi: float) -> tuple[float, int]:
    """Position and heading of a point moving at ``speed`` that turns around at ``lo`` and ``hi``."""
    span = max(hi - lo, 1e-6)
    offset = min(max(x0 - lo, 0.0), span)
    p = (offset if direction > 0 else 2 * span - offset) + speed * t
    m = math.fmod(p, 2 * span)
    if m < span:
        return lo + m, 1
    return lo + 2 * span - m, -1


def gait_pose(phase: float, *, amp: float, knee: float, arm_amp: float, elbow: float = 0.25, lean: float = 0.0) -> Pose:
    """A walking/running pose at ``phase`` (radians) for a figure facing +x."""
    s = math.sin(phase)
    return Pose(
        lean=lean,
        leg_l=(amp * s, knee * max(0.0, s)),
        leg_r=(amp * s, -knee * max(0.0, -s)),
        arm_l=(0.08 - arm_amp * s, -elbow),
        arm_r=(0.08 - arm_amp * s, elbow),
    )


def idle_pose(t: int, *, phase: float, period: float, gesture: float = 0.0) -> Pose:
    """Standing: a slow sway, plus a talking hand gesture when ``gesture`` > 0."""
    c = math.sin(TWO_PI * t / period + phase)
    arm_r = (0.12 + 0.05 * c + gesture * (0.6 + 0.4 * c), 0.1 - gesture * (1.0 + 0.3 * c))
    return Pose(
        lean=0.02 * c,
        arm_l=(0.12 - 0.04 * c, 0.1),
        arm_r=arm_r,
        leg_l=(0.05, 0.0),
        leg_r=(0.05 + 0.02 * c, 0.0),
    )


# --------------------------------------------------------------------------- action classes


@dataclass(frozen=True)
class ActionSetup:
    """Where the actor of an action clip stands and how big it is (output pixels)."""

    x: float
    ground_y: float
    height: float
    frame_width: int


def _walk_like(rng: np.random.Generator, setup: ActionSetup, *, running: bool) -> Program:
    h = setup.height
    speed = h * (rng.uniform(0.03, 0.042) if running else rng.uniform(0.011, 0.016))
    period = rng.uniform(10, 14) if running else rng.uniform(22, 30)
    amp = rng.uniform(0.62, 0.75) if running else rng.uniform(0.32, 0.42)
    knee = rng.uniform(1.0, 1.3) if running else rng.uniform(0.35, 0.55)
    arm_amp = rng.uniform(0.55, 0.75) if running else rng.uniform(0.22, 0.32)
    elbow = rng.uniform(1.2, 1.5) if running else rng.uniform(0.15, 0.3)
    lean = rng.uniform(0.15, 0.25) if running else rng.uniform(0.0, 0.05)
    phase0 = rng.uniform(0, TWO_PI)
    direction = 1 if rng.random() < 0.5 else -1
    lo, hi = 0.15 * setup.frame_width, 0.85 * setup.frame_width

    def program(t: int) -> FigureState:
        x, heading = bounce(setup.x, speed, direction, t, lo, hi)
        pose = gait_pose(TWO_PI * t / period + phase0, amp=amp, knee=knee, arm_amp=arm_amp, elbow=elbow, lean=lean)
        return FigureState(x=x, ground_y=setup.ground_y, height=h, pose=pose, facing=heading)

    return program


def _jump_in_place(rng: np.random.Generator, setup: ActionSetup) -> Program:
    period = rng.uniform(14, 20)
    height = setup.height * rng.uniform(0.18, 0.26)
    phase0 = rng.uniform(0, 1)
    facing = 1 if rng.random() < 0.5 else -1

    def program(t: int) -> FigureState:
        u = (t / period + phase0) % 1.0
        if u < 0.65:  # airborne
            s = math.sin(math.pi * u / 0.65)
            lift, crouch = height * s, 0.0
        else:  # landing crouch and take-off
            lift, crouch = 0.0, math.sin(math.pi * (u - 0.65) / 0.35)
        arms = 0.3 + 2.2 * (lift / height) - 0.2 * crouch
        pose = Pose(
            lean=0.1 * crouch,
            arm_l=(arms, 0.2), arm_r=(arms, 0.2),
            leg_l=(0.08 + 0.35 * crouch, -0.8 * crouch), leg_r=(0.08 + 0.35 * crouch, -0.8 * crouch),
        )
        return FigureState(x=setup.x, ground_y=setup.ground_y, height=setup.height, pose=pose, facing=facing, lift=lift)

    return program


def _jumping_jack(rng: np.random.Generator, setup: ActionSetup) -> Program:
    period = rng.uniform(16, 22)
    phase0 = rng.uniform(0, TWO_PI)
    hop = setup.height * rng.uniform(0.04, 0.07)

    def program(t: int) -> FigureState:
        angle = TWO_PI * t / period + phase0
        s = 0.5 * (1.0 - math.cos(angle))
        arms = 0.15 + 2.75 * s
        legs = 0.04 + 0.36 * s
        pose = Pose(arm_l=(arms, 0.1), arm_r=(arms, 0.1), leg_l=(legs, -0.05), leg_r=(legs, -0.05))
        return FigureState(x=setup.x, ground_y=setup.ground_y, height=setup.height, pose=pose,
                           lift=hop * abs(math.sin(angle)))

    return program


def _hand_waving(rng: np.random.Generator, setup: ActionSetup) -> Program:
    period = rng.uniform(8, 12)
    phase0 = rng.uniform(0, TWO_PI)
    raise_angle = rng.uniform(2.5, 2.85)
    use_right = rng.random() < 0.5

    def program(t: int) -> FigureState:
        wave = 0.65 * math.sin(TWO_PI * t / period + phase0)
        waving = (raise_angle + 0.15 * wave, wave)
        resting = (0.12, 0.1)
        pose = Pose(arm_r=waving if use_right else resting, arm_l=resting if use_right else waving)
        return FigureState(x=setup.x, ground_y=setup.ground_y, height=setup.height, pose=pose)

    return program


def _clapping(rng: np.random.Generator, setup: ActionSetup) -> Program:
    period = rng.uniform(8, 12)
    phase0 = rng.uniform(0, TWO_PI)

    def program(t: int) -> FigureState:
        c = 0.5 * (1.0 + math.cos(TWO_PI * t / period + phase0))  # 1 = hands together
        shoulder = 1.0 - 0.75 * c
        elbow = -0.7 - 0.75 * c
        pose = Pose(arm_l=(shoulder, elbow), arm_r=(shoulder, elbow))
        return FigureState(x=setup.x, ground_y=setup.ground_y, height=setup.height, pose=pose)

    return program


def _squatting(rng: np.random.Generator, setup: ActionSetup) -> Program:
    period = rng.uniform(24, 34)
    phase0 = rng.uniform(0, TWO_PI)
    depth = rng.uniform(0.8, 1.0)

    def program(t: int) -> FigureState:
        s = depth * 0.5 * (1.0 - math.cos(TWO_PI * t / period + phase0))
        pose = Pose(
            lean=0.15 * s,
            arm_l=(0.15 + 1.25 * s, -0.2 * s), arm_r=(0.15 + 1.25 * s, -0.2 * s),
            leg_l=(0.06 + 0.75 * s, -1.45 * s), leg_r=(0.06 + 0.75 * s, -1.45 * s),
        )
        return FigureState(x=setup.x, ground_y=setup.ground_y, height=setup.height, pose=pose)

    return program


def _kicking(rng: np.random.Generator, setup: ActionSetup) -> Program:
    period = rng.uniform(16, 24)
    phase0 = rng.uniform(0, 1)
    facing = 1 if rng.random() < 0.5 else -1
    kick_height = rng.uniform(1.2, 1.5)

    def program(t: int) -> FigureState:
        u = (t / period + phase0) % 1.0
        k = math.sin(math.pi * u / 0.4) if u < 0.4 else 0.0
        windup = math.sin(math.pi * (u - 0.75) / 0.25) if u > 0.75 else 0.0
        pose = Pose(
            lean=-0.15 * k,
            arm_l=(0.5 + 0.3 * k, 0.3), arm_r=(0.5 + 0.3 * k, 0.3),
            leg_l=(0.1, 0.0),
            leg_r=(0.05 + kick_height * k - 0.25 * windup, -0.3 * (1 - k) - 0.6 * windup),
        )
        return FigureState(x=setup.x, ground_y=setup.ground_y, height=setup.height, pose=pose, facing=facing)

    return program


def _spinning(rng: np.random.Generator, setup: ActionSetup) -> Program:
    period = rng.uniform(18, 28)
    phase0 = rng.uniform(0, TWO_PI)
    arms = rng.uniform(1.3, 1.55)
    spin = 1 if rng.random() < 0.5 else -1

    def program(t: int) -> FigureState:
        c = math.cos(spin * TWO_PI * t / period + phase0)
        pose = Pose(arm_l=(arms, 0.05), arm_r=(arms, 0.05), leg_l=(0.08, 0.0), leg_r=(0.08, 0.0))
        return FigureState(x=setup.x, ground_y=setup.ground_y, height=setup.height, pose=pose,
                           facing=1 if c >= 0 else -1, squash=max(0.2, abs(c)), back=c < 0)

    return program


def _bending_over(rng: np.random.Generator, setup: ActionSetup) -> Program:
    period = rng.uniform(28, 40)
    phase0 = rng.uniform(0, TWO_PI)
    depth = rng.uniform(1.15, 1.35)
    facing = 1 if rng.random() < 0.5 else -1

    def program(t: int) -> FigureState:
        lean = depth * 0.5 * (1.0 - math.cos(TWO_PI * t / period + phase0))
        # Arms hang toward the ground: rotate them against the torso's lean.
        pose = Pose(lean=lean, arm_l=(-lean + 0.05, 0.05), arm_r=(lean + 0.05, 0.05),
                    leg_l=(0.05, 0.1 * lean), leg_r=(0.05, -0.1 * lean))
        return FigureState(x=setup.x, ground_y=setup.ground_y, height=setup.height, pose=pose, facing=facing)

    return program


ACTION_PROGRAMS: dict[str, Callable[[np.random.Generator, ActionSetup], Program]] = {
    "Walking": lambda rng, s: _walk_like(rng, s, running=False),
    "Running": lambda rng, s: _walk_like(rng, s, running=True),
    "JumpInPlace": _jump_in_place,
    "JumpingJack": _jumping_jack,
    "HandWaving": _hand_waving,
    "Clapping": _clapping,
    "Squatting": _squatting,
    "Kicking": _kicking,
    "Spinning": _spinning,
    "BendingOver": _bending_over,
}


def action_program(class_name: str, rng: np.random.Generator, setup: ActionSetup) -> Program:
    if class_name not in ACTION_PROGRAMS:
        raise ValueError(f"unknown action class {class_name!r}; expected one of {', '.join(ACTION_PROGRAMS)}")
    return ACTION_PROGRAMS[class_name](rng, setup)


def standing_program(rng: np.random.Generator, *, x: float, ground_y: float, height: float,
                     facing: int | None = None, gesture: float = 0.0) -> Program:
    """A bystander standing in place (relationship companions, waiting people)."""
    period = rng.uniform(40, 70)
    phase0 = rng.uniform(0, TWO_PI)
    face = facing if facing is not None else (1 if rng.random() < 0.5 else -1)

    def program(t: int) -> FigureState:
        return FigureState(x=x, ground_y=ground_y, height=height,
                           pose=idle_pose(t, phase=phase0, period=period, gesture=gesture), facing=face)

    return program


# --------------------------------------------------------------------------- anomaly scenes


@dataclass
class Segment:
    """One stretch of an actor's timeline: frames ``[start, end)`` in one mode."""

    start: int
    end: int
    mode: str
    x0: float
    direction: int
    params: dict = field(default_factory=dict)


@dataclass
class Projectile:
    """A thrown object: launched at ``t0`` from ``(x0, y0)``; gone at ``t_end``."""

    t0: int
    t_end: int
    x0: float
    y0: float
    vx: float
    vy: float
    gravity: float
    radius: float
    colour: tuple[int, int, int]
    floor: float

    def position(self, t: int) -> tuple[float, float] | None:
        if not self.t0 <= t < self.t_end:
            return None
        dt = t - self.t0
        y = self.y0 + self.vy * dt + 0.5 * self.gravity * dt * dt
        if y > self.floor:
            return None
        return (self.x0 + self.vx * dt, y)


class Track:
    """An actor of an anomaly scene: a timeline of segments (walk, stand, run, fight, fall, throw)."""

    def __init__(self, rng: np.random.Generator, *, ground_y: float, height: float, frame_width: int) -> None:
        self.ground_y = ground_y
        self.height = height
        self.frame_width = frame_width
        self.segments: list[Segment] = []
        self.walk_speed = height * rng.uniform(0.011, 0.017)
        self.walk_period = rng.uniform(22, 30)
        self.walk_amp = rng.uniform(0.3, 0.4)
        self.phase0 = rng.uniform(0, TWO_PI)
        self.idle_period = rng.uniform(40, 70)
        self.run_speed = self.walk_speed * rng.uniform(2.8, 3.6)
        self.run_period = rng.uniform(9, 12)
        self.fight_freqs = rng.uniform(0.45, 0.9, size=4)
        self.fight_phases = rng.uniform(0, TWO_PI, size=4)
        self.margin = height * 0.4

    # ---- building

    def add(self, start: int, end: int, mode: str, x0: float, direction: int, **params) -> "Track":
        if end > start:
            self.segments.append(Segment(start, end, mode, x0, direction, params))
        return self

    def end_position(self, segment: Segment) -> tuple[float, int]:
        """Where a segment leaves the actor (x, heading)."""
        return self._position(segment, segment.end - segment.start)

    def _position(self, seg: Segment, local: float) -> tuple[float, int]:
        if seg.mode == "walk":
            return seg.x0 + seg.direction * self.walk_speed * local, seg.direction
        if seg.mode == "run":
            lo, hi = 0.08 * self.frame_width, 0.92 * self.frame_width
            return bounce(seg.x0, self.run_speed, seg.direction, local, lo, hi)
        return seg.x0, seg.direction

    # ---- rendering

    def __call__(self, t: int) -> FigureState | None:
        for seg in self.segments:
            if seg.start <= t < seg.end:
                return self._state(seg, t)
        return None

    def _state(self, seg: Segment, t: int) -> FigureState | None:
        local = t - seg.start
        x, heading = self._position(seg, local)
        if x < -self.margin or x > self.frame_width + self.margin:
            return None
        h = self.height
        if seg.mode == "walk":
            pose = gait_pose(TWO_PI * t / self.walk_period + self.phase0, amp=self.walk_amp, knee=0.45, arm_amp=0.26)
        elif seg.mode == "run":
            pose = gait_pose(TWO_PI * t / self.run_period + self.phase0, amp=0.7, knee=1.15, arm_amp=0.65,
                             elbow=1.35, lean=0.2)
        elif seg.mode == "stand":
            pose = idle_pose(t, phase=self.phase0, period=self.idle_period, gesture=seg.params.get("gesture", 0.0))
        elif seg.mode == "fight":
            return self._fight(seg, t, x)
        elif seg.mode == "fall":
            return self._fall(seg, local, x)
        elif seg.mode == "throw":
            return self._throw(seg, local, x)
        else:
            raise ValueError(f"unknown segment mode {seg.mode!r}")
        return FigureState(x=x, ground_y=self.ground_y, height=h, pose=pose, facing=heading)

    def _fight(self, seg: Segment, t: int, x: float) -> FigureState:
        f, ph = self.fight_freqs, self.fight_phases
        h = self.height
        shove = 0.12 * h * math.sin(f[0] * t + ph[0]) + 0.06 * h * math.sin(2.3 * f[1] * t + ph[1])
        punch = 0.5 + 0.5 * math.sin(1.7 * f[2] * t + ph[2])
        flail = math.sin(2.1 * f[3] * t + ph[3])
        pose = Pose(
            lean=0.25 + 0.2 * flail,
            arm_r=(0.5 + 1.2 * punch, -0.9 * (1.0 - punch)),
            arm_l=(-0.3 - 1.0 * (1.0 - punch), -0.4 + 0.3 * flail),
            leg_l=(0.25 + 0.1 * flail, -0.1), leg_r=(0.3 - 0.1 * flail, 0.1),
        )
        lift = 0.05 * h * max(0.0, math.sin(1.3 * f[1] * t + ph[3]))
        return FigureState(x=x + seg.direction * shove, ground_y=self.ground_y, height=h, pose=pose,
                           facing=seg.direction, lift=lift)

    def _fall(self, seg: Segment, local: int, x: float) -> FigureState:
        length = seg.end - seg.start
        fall_frames, rise_frames = 6, 10
        if local < fall_frames:
            amount = _smoothstep(local / fall_frames)
        elif local >= length - rise_frames:
            amount = 1.0 - _smoothstep((local - (length - rise_frames)) / rise_frames)
        else:
            amount = 1.0
        twitch = math.sin(0.7 * local) * amount
        pose = Pose(
            tilt=seg.direction * 1.5 * amount,
            arm_l=(0.3 + 0.9 * amount + 0.3 * twitch, -0.3), arm_r=(0.3 + 0.9 * amount - 0.3 * twitch, -0.3),
            leg_l=(0.05 + 0.2 * twitch, 0.2 * amount), leg_r=(0.05 - 0.1 * twitch, -0.2 * amount),
        )
        # The sign of tilt already follows the heading; mirroring again would undo it.
        return FigureState(x=x, ground_y=self.ground_y, height=self.height, pose=pose, facing=1)

    def _throw(self, seg: Segment, local: int, x: float) -> FigureState:
        period = seg.params["period"]
        u = (local % period) / period
        if u < 0.6:  # wind up: throwing arm swings back and up
            arm = -2.2 * _smoothstep(u / 0.6)
        elif u < 0.75:  # release: fast swing forward
            arm = -2.2 + 3.7 * _smoothstep((u - 0.6) / 0.15)
        else:  # follow through and return
            arm = 1.5 * (1.0 - _smoothstep((u - 0.75) / 0.25))
        lean = 0.25 * math.sin(math.pi * min(1.0, max(0.0, (u - 0.5) / 0.4)))
        # Throwing arm is the right one, which faces the throw after mirroring.
        pose = Pose(lean=lean, arm_r=(arm, -0.3), arm_l=(0.35, -0.2), leg_l=(0.2, 0.0), leg_r=(0.2, 0.0))
        return FigureState(x=x, ground_y=self.ground_y, height=self.height, pose=pose, facing=seg.direction)


def throw_projectiles(track: Track, seg: Segment, rng: np.random.Generator, *, frame_height: int) -> list[Projectile]:
    """The objects one throw segment launches: one per throw cycle, released at 72% of it."""
    period = seg.params["period"]
    h = track.height
    colour = tuple(int(c) for c in rng.choice([(200, 30, 30), (30, 30, 30), (230, 150, 20), (240, 240, 240)]))
    out = []
    local = int(round(0.72 * period))
    while seg.start + local < seg.end:
        t0 = seg.start + local
        hand_x = seg.x0 + seg.direction * 0.25 * h
        hand_y = track.ground_y - 0.95 * h
        out.append(Projectile(
            t0=t0, t_end=seg.end, x0=hand_x, y0=hand_y,
            vx=seg.direction * h * rng.uniform(0.09, 0.14), vy=-h * rng.uniform(0.03, 0.06),
            gravity=h * 0.006, radius=max(1.2, 0.06 * h), colour=colour,  # type: ignore[arg-type]
            floor=float(frame_height) + 4.0,
        ))
        local += period
    return out
