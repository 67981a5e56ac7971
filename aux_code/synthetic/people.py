"""Procedural people: private appearance traits, colours, an articulated pose, and drawing.

A person is drawn as a jointed figure (head, torso, two-segment arms and legs) on an RGB
canvas rendered at ``SUPERSAMPLE`` times the output size and area-downsampled afterwards,
which anti-aliases thin limbs at no per-call cost.

Appearance traits mirror the person-level VISPR-7 attributes:

- ``feminine``: the gender proxy, long hair and a dress versus short hair and trousers;
- ``face``: ``complete`` (eyes and mouth drawn), ``partial`` (a mask covers the lower half),
  ``hidden`` (seen from behind: the head shows only hair);
- ``exposed_skin``: bare arms and legs in skin colour versus sleeves and trousers/tights;
- ``dark_skin``: the skin tone.

Pose angles are in radians. Limb angles use a mirrored convention: 0 points straight down
the body, positive rotates the limb outward (away from the body's midline), so equal
numbers on both sides give a symmetric pose. The second joint (elbow, knee) is relative to
the first. ``lean`` rotates the upper body about the hip, ``tilt`` the whole body (falls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

SUPERSAMPLE = 2
_SHIFT = 3  # cv2 fixed-point bits: sub-pixel placement of every drawn shape
_ONE = 1 << _SHIFT

FACE_STATES: tuple[str, ...] = ("complete", "partial", "hidden")

# Body proportions in units of standing height (feet to top of hair).
LEG_UPPER, LEG_LOWER = 0.235, 0.225
TORSO = 0.28
NECK = 0.02
HEAD_R = 0.1
SHOULDER_HALF = 0.09
HIP_HALF = 0.05
ARM_UPPER, ARM_LOWER = 0.15, 0.14

_LIGHT_SKIN = ((236, 200, 172), (225, 186, 150), (242, 210, 185))
_DARK_SKIN = ((120, 78, 52), (98, 64, 42), (136, 92, 60))
_HAIR = ((25, 20, 18), (70, 45, 25), (150, 110, 60), (200, 170, 90), (120, 120, 120), (110, 50, 25))
# Clothing avoids skin-like hues so that bare skin stays distinguishable from clothes.
_CLOTHES = (
    (30, 60, 160), (40, 120, 200), (20, 120, 60), (90, 160, 60), (170, 30, 40), (200, 60, 120),
    (110, 50, 150), (230, 200, 40), (60, 60, 70), (200, 200, 210), (20, 20, 25), (0, 140, 140),
)
_MASKS = ((220, 235, 245), (120, 170, 220), (35, 35, 40))
_SHOES = ((30, 25, 25), (90, 60, 40), (230, 230, 230))


@dataclass(frozen=True)
class PersonTraits:
    """The private appearance of one person (sampled independently of what they do)."""

    feminine: bool
    face: str
    exposed_skin: bool
    dark_skin: bool

    def __post_init__(self) -> None:
        if self.face not in FACE_STATES:
            raise ValueError(f"PersonTraits.face = {self.face!r} must be one of {FACE_STATES}")


def sample_traits(rng: np.random.Generator) -> PersonTraits:
    """Traits for a person in a video: each drawn independently of every other choice."""
    return PersonTraits(
        feminine=bool(rng.random() < 0.5),
        face=FACE_STATES[int(rng.choice(3, p=(0.5, 0.25, 0.25)))],
        exposed_skin=bool(rng.random() < 0.35),
        dark_skin=bool(rng.random() < 0.4),
    )


@dataclass(frozen=True)
class Look:
    """Colours (RGB) and build of one drawn person; derived from traits at render time."""

    traits: PersonTraits
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shirt: tuple[int, int, int]
    legs: tuple[int, int, int]
    shoes: tuple[int, int, int]
    mask: tuple[int, int, int]
    build: float


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)  # type: ignore[return-value]


def sample_look(rng: np.random.Generator, traits: PersonTraits) -> Look:
    skins = _DARK_SKIN if traits.dark_skin else _LIGHT_SKIN
    shirt_index, legs_index = rng.choice(len(_CLOTHES), size=2, replace=False)
    return Look(
        traits=traits,
        skin=_jitter(rng, skins[int(rng.integers(len(skins)))], 8),
        hair=_jitter(rng, _HAIR[int(rng.integers(len(_HAIR)))], 10),
        shirt=_jitter(rng, _CLOTHES[int(shirt_index)], 12),
        legs=_jitter(rng, _CLOTHES[int(legs_index)], 12),
        shoes=_SHOES[int(rng.integers(len(_SHOES)))],
        mask=_MASKS[int(rng.integers(len(_MASKS)))],
        build=float(rng.uniform(0.9, 1.12)),
    )


@dataclass
class Pose:
    """Joint angles (radians) of one figure; see the module docstring for conventions."""

    lean: float = 0.0
    tilt: float = 0.0
    arm_l: tuple[float, float] = (0.12, 0.1)
    arm_r: tuple[float, float] = (0.12, 0.1)
    leg_l: tuple[float, float] = (0.04, 0.0)
    leg_r: tuple[float, float] = (0.04, 0.0)


@dataclass
class FigureState:
    """Where and how one person appears in one frame (output-pixel coordinates).

    ``x`` is the hip's horizontal position, ``ground_y`` the row the lowest body point rests
    on, ``lift`` raises the body above it (jumps), ``height`` is the standing height.
    ``facing`` mirrors the figure (+1 faces +x), ``squash`` narrows it (spinning), ``back``
    shows the person from behind.
    """

    x: float
    ground_y: float
    height: float
    pose: Pose = field(default_factory=Pose)
    facing: int = 1
    squash: float = 1.0
    back: bool = False
    lift: float = 0.0


def _limb(origin: tuple[float, float], down: tuple[float, float], out: tuple[float, float],
          angles: tuple[float, float], lengths: tuple[float, float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Middle and end joint of a two-segment limb, in body-local units (y up)."""
    first = angles[0]
    second = angles[0] + angles[1]
    d1 = (down[0] * math.cos(first) + out[0] * math.sin(first), down[1] * math.cos(first) + out[1] * math.sin(first))
    d2 = (down[0] * math.cos(second) + out[0] * math.sin(second), down[1] * math.cos(second) + out[1] * math.sin(second))
    middle = (origin[0] + lengths[0] * d1[0], origin[1] + lengths[0] * d1[1])
    end = (middle[0] + lengths[1] * d2[0], middle[1] + lengths[1] * d2[1])
    return middle, end


@dataclass
class Skeleton:
    """Joint positions of a posed figure in image pixels (y down), before supersampling."""

    points: dict[str, tuple[float, float]]
    height: float
    head_radius: float
    torso_angle: float
    leg_angle: float


def pose_skeleton(state: FigureState, build: float = 1.0) -> Skeleton:
    """Place a posed figure: joints in output-pixel coordinates."""
    pose = state.pose
    upper = pose.lean + pose.tilt
    u = (math.sin(upper), math.cos(upper))            # up along the torso
    p = (math.cos(upper), -math.sin(upper))           # toward +x across the torso
    ul = (math.sin(pose.tilt), math.cos(pose.tilt))   # up along the legs' frame
    pl = (math.cos(pose.tilt), -math.sin(pose.tilt))
    hip = (0.0, 0.0)
    neck = (TORSO * u[0], TORSO * u[1])
    head = (neck[0] + (NECK + HEAD_R) * u[0], neck[1] + (NECK + HEAD_R) * u[1])
    sw = SHOULDER_HALF * build
    shoulder_l = (neck[0] - sw * p[0] - 0.015 * u[0], neck[1] - sw * p[1] - 0.015 * u[1])
    shoulder_r = (neck[0] + sw * p[0] - 0.015 * u[0], neck[1] + sw * p[1] - 0.015 * u[1])
    hip_l = (-HIP_HALF * pl[0], -HIP_HALF * pl[1])
    hip_r = (HIP_HALF * pl[0], HIP_HALF * pl[1])
    down = (-u[0], -u[1])
    down_l = (-ul[0], -ul[1])
    elbow_l, hand_l = _limb(shoulder_l, down, (-p[0], -p[1]), pose.arm_l, (ARM_UPPER, ARM_LOWER))
    elbow_r, hand_r = _limb(shoulder_r, down, p, pose.arm_r, (ARM_UPPER, ARM_LOWER))
    knee_l, foot_l = _limb(hip_l, down_l, (-pl[0], -pl[1]), pose.leg_l, (LEG_UPPER, LEG_LOWER))
    knee_r, foot_r = _limb(hip_r, down_l, pl, pose.leg_r, (LEG_UPPER, LEG_LOWER))
    local = {
        "hip": hip, "neck": neck, "head": head, "shoulder_l": shoulder_l, "shoulder_r": shoulder_r,
        "elbow_l": elbow_l, "hand_l": hand_l, "elbow_r": elbow_r, "hand_r": hand_r,
        "hip_l": hip_l, "hip_r": hip_r, "knee_l": knee_l, "foot_l": foot_l, "knee_r": knee_r, "foot_r": foot_r,
    }
    # Rest the lowest body point (feet, or the head and hands when lying) on the ground row.
    lowest = min(y for _, y in local.values())
    lowest = min(lowest, head[1] - HEAD_R)
    h = state.height
    sx = state.facing * state.squash * h
    hip_y = state.ground_y + lowest * h - state.lift
    points = {name: (state.x + x * sx, hip_y - y * h) for name, (x, y) in local.items()}
    return Skeleton(points=points, height=h, head_radius=HEAD_R * h, torso_angle=upper, leg_angle=pose.tilt)


# --------------------------------------------------------------------------- drawing


def _fx(v: float) -> int:
    return int(round(v * SUPERSAMPLE * _ONE))


def _pt(p: tuple[float, float]) -> tuple[int, int]:
    return (_fx(p[0]), _fx(p[1]))


class _Pen:
    """Draws primitives on a supersampled canvas and tracks the extent of everything drawn.

    The extent (output pixels) includes line widths, radii and half a pixel of
    anti-aliasing, so a person's box covers every pixel the person changed.
    """

    _AA = 0.5

    def __init__(self, canvas: np.ndarray) -> None:
        self.canvas = canvas
        self.x0 = self.y0 = math.inf
        self.x1 = self.y1 = -math.inf

    def _grow(self, p: tuple[float, float], pad: float) -> None:
        pad += self._AA
        self.x0 = min(self.x0, p[0] - pad)
        self.y0 = min(self.y0, p[1] - pad)
        self.x1 = max(self.x1, p[0] + pad)
        self.y1 = max(self.y1, p[1] + pad)

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def line(self, a: tuple[float, float], b: tuple[float, float], colour, width: float) -> None:
        thickness = max(1, int(round(width * SUPERSAMPLE)))
        cv2.line(self.canvas, _pt(a), _pt(b), colour, thickness, cv2.LINE_AA, _SHIFT)
        for p in (a, b):
            self._grow(p, thickness / (2 * SUPERSAMPLE))

    def disc(self, c: tuple[float, float], radius: float, colour) -> None:
        r = max(1, _fx(radius))
        cv2.circle(self.canvas, _pt(c), r, colour, -1, cv2.LINE_AA, _SHIFT)
        self._grow(c, r / (_ONE * SUPERSAMPLE))

    def poly(self, points: list[tuple[float, float]], colour) -> None:
        pts = np.array([_pt(p) for p in points], dtype=np.int32)
        cv2.fillPoly(self.canvas, [pts], colour, cv2.LINE_AA, _SHIFT)
        for p in points:
            self._grow(p, 0.0)

    def half_disc(self, c: tuple[float, float], radius: float, colour, *, top: bool, angle_deg: float) -> None:
        start, end = (180, 360) if top else (0, 180)
        r = max(1, _fx(radius))
        cv2.ellipse(self.canvas, _pt(c), (r, r), angle_deg, start, end, colour, -1, cv2.LINE_AA, _SHIFT)
        self._grow(c, r / (_ONE * SUPERSAMPLE))


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _along(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def draw_person(canvas: np.ndarray, state: FigureState, look: Look) -> tuple[float, float, float, float]:
    """Draw one person on a supersampled RGB canvas; returns its box (x0, y0, x1, y1) in output pixels."""
    pen = _Pen(canvas)
    sk = pose_skeleton(state, look.build)
    pt = sk.points
    h = sk.height
    traits = look.traits
    back = state.back or traits.face == "hidden"
    arm_w, leg_w = 0.055 * h * look.build, 0.07 * h * look.build
    r = sk.head_radius
    outline = _mix(look.shirt, (0, 0, 0), 0.35)

    # Screen-space "up" of the torso, for hair and dress placement.
    up = (pt["neck"][0] - pt["hip"][0], pt["neck"][1] - pt["hip"][1])
    up_len = math.hypot(*up) or 1.0
    up = (up[0] / up_len, up[1] / up_len)
    across = (-up[1], up[0])
    head = pt["head"]
    head_angle = math.degrees(math.atan2(up[0], -up[1]))

    long_hair = traits.feminine
    if long_hair:
        # Hair falling behind the head down to the shoulders.
        hw = r * 1.15
        top = (head[0] + up[0] * r * 0.6, head[1] + up[1] * r * 0.6)
        bottom = (head[0] - up[0] * r * 2.1, head[1] - up[1] * r * 2.1)
        pen.poly([
            (top[0] - across[0] * hw, top[1] - across[1] * hw), (top[0] + across[0] * hw, top[1] + across[1] * hw),
            (bottom[0] + across[0] * hw * 1.1, bottom[1] + across[1] * hw * 1.1),
            (bottom[0] - across[0] * hw * 1.1, bottom[1] - across[1] * hw * 1.1),
        ], look.hair)

    # Legs: trousers/tights, or shorts over bare skin.
    leg_colour = look.legs
    skin_legs = traits.exposed_skin
    for side in ("l", "r"):
        hip_point, knee, foot = pt[f"hip_{side}"], pt[f"knee_{side}"], pt[f"foot_{side}"]
        if skin_legs:
            short_end = _along(hip_point, knee, 0.45)
            pen.line(short_end, knee, look.skin, leg_w * 0.9)
            pen.line(knee, foot, look.skin, leg_w * 0.85)
            pen.line(hip_point, short_end, leg_colour, leg_w)
        else:
            pen.line(hip_point, knee, leg_colour, leg_w)
            pen.line(knee, foot, leg_colour, leg_w * 0.95)
        pen.disc(foot, leg_w * 0.6, look.shoes)

    # Torso (shirt) as a quadrilateral from shoulders to hips.
    sl, sr = pt["shoulder_l"], pt["shoulder_r"]
    if (sr[0] - sl[0]) * across[0] + (sr[1] - sl[1]) * across[1] < 0:
        sl, sr = sr, sl  # mirrored figure: keep the quadrilateral convex
    hip = pt["hip"]
    waist_half = 0.075 * h * look.build * state.squash
    pen.poly([
        sl, sr,
        (hip[0] + across[0] * waist_half, hip[1] + across[1] * waist_half),
        (hip[0] - across[0] * waist_half, hip[1] - across[1] * waist_half),
    ], look.shirt)
    if traits.feminine:
        # A dress: a trapezoid from the waist flaring to above the knees.
        knee_mid = _along(pt["knee_l"], pt["knee_r"], 0.5)
        hem_centre = _along(hip, knee_mid, 0.8)
        leg_across = (pt["hip_r"][0] - pt["hip_l"][0], pt["hip_r"][1] - pt["hip_l"][1])
        norm = math.hypot(*leg_across) or 1.0
        leg_across = (leg_across[0] / norm, leg_across[1] / norm)
        hem_half = max(0.13 * h * state.squash, abs(pt["knee_r"][0] - pt["knee_l"][0]) * 0.6)
        waist = _along(hip, pt["neck"], 0.25)
        pen.poly([
            (waist[0] - leg_across[0] * waist_half, waist[1] - leg_across[1] * waist_half),
            (waist[0] + leg_across[0] * waist_half, waist[1] + leg_across[1] * waist_half),
            (hem_centre[0] + leg_across[0] * hem_half, hem_centre[1] + leg_across[1] * hem_half),
            (hem_centre[0] - leg_across[0] * hem_half, hem_centre[1] - leg_across[1] * hem_half),
        ], look.shirt)
        pen.line((hem_centre[0] - leg_across[0] * hem_half, hem_centre[1] - leg_across[1] * hem_half),
                 (hem_centre[0] + leg_across[0] * hem_half, hem_centre[1] + leg_across[1] * hem_half), outline, 0.02 * h)

    # Arms: full sleeves, or a short sleeve cap over bare skin.
    for side in ("l", "r"):
        shoulder, elbow, hand = pt[f"shoulder_{side}"], pt[f"elbow_{side}"], pt[f"hand_{side}"]
        if traits.exposed_skin:
            cap = _along(shoulder, elbow, 0.3)
            pen.line(cap, elbow, look.skin, arm_w * 0.9)
            pen.line(elbow, hand, look.skin, arm_w * 0.85)
            pen.line(shoulder, cap, look.shirt, arm_w * 1.1)
        else:
            pen.line(shoulder, elbow, look.shirt, arm_w)
            pen.line(elbow, hand, look.shirt, arm_w * 0.95)
        pen.disc(hand, arm_w * 0.6, look.skin)

    # Neck and head.
    pen.line(pt["neck"], _along(pt["neck"], head, 0.5), look.skin, arm_w * 0.9)
    if back:
        pen.disc(head, r * 1.04, look.hair)
    else:
        pen.disc(head, r, look.skin)
        eye_dx, eye_dy, eye_r = 0.38 * r, 0.1 * r, max(0.16 * r, 0.35)
        for sign in (-1, 1):
            eye = (head[0] + across[0] * eye_dx * sign * state.squash + up[0] * eye_dy,
                   head[1] + across[1] * eye_dx * sign * state.squash + up[1] * eye_dy)
            pen.disc(eye, eye_r, (20, 20, 30))
        if traits.face == "partial":
            pen.half_disc(head, r * 1.02, look.mask, top=False, angle_deg=head_angle)
            pen.line((head[0] - across[0] * r * 0.95, head[1] - across[1] * r * 0.95),
                     (head[0] + across[0] * r * 0.95, head[1] + across[1] * r * 0.95), _mix(look.mask, (0, 0, 0), 0.3), 0.03 * h)
        else:
            mouth_c = (head[0] - up[0] * 0.45 * r, head[1] - up[1] * 0.45 * r)
            mw = 0.26 * r * state.squash
            pen.line((mouth_c[0] - across[0] * mw, mouth_c[1] - across[1] * mw),
                     (mouth_c[0] + across[0] * mw, mouth_c[1] + across[1] * mw), (150, 40, 50), max(0.016 * h, 0.5))
        # Hair on top: a cap (short) or a fuller cap with a fringe (long).
        cap_r = r * (1.1 if long_hair else 1.06)
        pen.half_disc((head[0] + up[0] * r * 0.12, head[1] + up[1] * r * 0.12), cap_r, look.hair,
                   top=True, angle_deg=head_angle)

    return pen.box


def draw_ball(canvas: np.ndarray, centre: tuple[float, float], radius: float, colour) -> None:
    pen = _Pen(canvas)
    pen.disc(centre, radius, colour)
    pen.disc((centre[0] - radius * 0.3, centre[1] - radius * 0.3), radius * 0.35, _mix(colour, (255, 255, 255), 0.6))


def draw_hand_link(canvas: np.ndarray, a: tuple[float, float], b: tuple[float, float], colour, width: float) -> None:
    """Two hands holding: a short skin-coloured bar between them."""
    _Pen(canvas).line(a, b, colour, width)


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """Integer box clipped to the frame (x1, y1 exclusive), or None when nothing is inside."""
    x0 = max(0, int(math.floor(box[0])))
    y0 = max(0, int(math.floor(box[1])))
    x1 = min(width, int(math.ceil(box[2])))
    y1 = min(height, int(math.ceil(box[3])))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


def downsample(canvas: np.ndarray, height: int, width: int) -> np.ndarray:
    """Supersampled canvas to the output frame (area averaging = anti-aliasing)."""
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)
