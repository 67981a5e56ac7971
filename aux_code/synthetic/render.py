"""Rendering planned items to pixels: action clips, anomaly videos and privacy images.

Each function takes one item's plan and the world seed and returns RGB uint8 frames plus
the ground-truth person boxes. All randomness comes from the item's own render stream, so
an item renders the same whether it is made alone (tests, previews) or inside a world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .motion import (
    ActionSetup,
    Projectile,
    Track,
    action_program,
    gait_pose,
    standing_program,
    throw_projectiles,
)
from .people import (
    ARM_LOWER,
    ARM_UPPER,
    SHOULDER_HALF,
    FigureState,
    Look,
    Pose,
    clip_box,
    downsample,
    draw_ball,
    draw_hand_link,
    draw_person,
    pose_skeleton,
    sample_look,
)
from .plan import (
    RENDER_STREAM,
    ActionClipPlan,
    AnomalyEvent,
    AnomalyVideoPlan,
    ImagePlan,
    item_rng,
    shanghaitech_scene_key,
)
from .scenes import Scene, make_scene
from .sizes import WorldSize


@dataclass
class Rendered:
    """Frames (each (H, W, 3) RGB uint8) and person boxes: int32 rows (frame, x0, y0, x1, y1)."""

    frames: list[np.ndarray]
    boxes: np.ndarray


def _boxes_array(rows: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    return np.array(rows, dtype=np.int32).reshape(-1, 5)


def _draw_frame(scene: Scene, people: list[tuple[FigureState, Look]], projectiles: list[Projectile], t: int,
                rows: list) -> np.ndarray:
    """Frame ``t``: people far to near, then thrown objects; appends the people's boxes to ``rows``."""
    canvas = scene.canvas.copy()
    # Farther people (higher ground rows) first, so nearer ones overlap them.
    for state, look in sorted(people, key=lambda item: item[0].ground_y):
        box = clip_box(draw_person(canvas, state, look), scene.width, scene.height)
        if box is not None:
            rows.append((t, *box))
    for projectile in projectiles:
        position = projectile.position(t)
        if position is not None:
            draw_ball(canvas, position, projectile.radius, projectile.colour)
    return downsample(canvas, scene.height, scene.width)


# --------------------------------------------------------------------------- UCF101 analogue


def render_action_clip(plan: ActionClipPlan, size: WorldSize, seed: int) -> Rendered:
    """One action clip: the actor performs the class; companions stand by (relationship attributes)."""
    h, w = size.frame_height, size.frame_width
    # A group shares camera, place and people, as UCF101 groups do, and (unlike UCF101) across
    # classes too: group g's place and people perform every action, so that on a world with
    # a few groups per class the background or a face cannot stand in for the motion.
    group_rng = item_rng(seed, (plan.key[0], plan.group), RENDER_STREAM)
    scene = make_scene(group_rng, height=h, width=w)
    looks = [sample_look(group_rng, traits) for traits in plan.people]
    base_height = h * group_rng.uniform(0.56, 0.66)
    base_ground = h * group_rng.uniform(0.9, 0.96)

    rng = item_rng(seed, plan.key, RENDER_STREAM)
    height = base_height * rng.uniform(0.95, 1.05)
    ground = base_ground + rng.uniform(-1.5, 1.5)
    x = w * rng.uniform(0.38, 0.62)
    actor = action_program(plan.class_name, rng, ActionSetup(x=x, ground_y=ground, height=height, frame_width=w))

    side = 1 if x < w / 2 else -1  # companions stand on the roomier side
    companion_spots = {
        "alone": [],
        "distant": [(side * w * 0.4, -0.22 * h, 0.62)],
        "pair": [(side * 0.42 * height, -0.02 * h, 0.97)],
        "group": [(side * 0.42 * height, -0.04 * h, 0.92), (-side * 0.42 * height, -0.06 * h, 0.9)],
        "pair_group": [(side * 0.42 * height, -0.03 * h, 0.95), (-side * 0.42 * height, -0.06 * h, 0.9),
                       (side * 0.8 * height, -0.09 * h, 0.85)],
    }[plan.layout]
    companions = []
    for (dx, dy, scale), look in zip(companion_spots, looks[1:]):
        companions.append((standing_program(rng, x=x + dx, ground_y=ground + dy, height=height * scale,
                                            facing=-int(math.copysign(1, dx))), look))

    rows: list = []
    frames = []
    for t in range(plan.num_frames):
        people = [(program(t), look) for program, look in companions]
        people.append((actor(t), looks[0]))
        frames.append(_draw_frame(scene, people, [], t, rows))
    return Rendered(frames=frames, boxes=_boxes_array(rows))


# --------------------------------------------------------------------------- VISPR analogue


def _static_pose(rng: np.random.Generator) -> Pose:
    kind = int(rng.integers(6))
    if kind == 0:  # relaxed
        return Pose(arm_l=(rng.uniform(0.05, 0.25), 0.1), arm_r=(rng.uniform(0.05, 0.25), 0.1))
    if kind == 1:  # mid-stride
        return gait_pose(rng.uniform(0, 2 * math.pi), amp=0.35, knee=0.45, arm_amp=0.25)
    if kind == 2:  # hands on hips
        return Pose(arm_l=(0.75, -2.0), arm_r=(0.75, -2.0), leg_l=(0.08, 0.0), leg_r=(0.08, 0.0))
    if kind == 3:  # one arm raised
        return Pose(arm_l=(0.15, 0.1), arm_r=(rng.uniform(2.2, 2.8), rng.uniform(-0.4, 0.4)))
    if kind == 4:  # arms folded in front
        return Pose(arm_l=(0.35, -1.6), arm_r=(0.35, -1.6))
    return Pose(lean=rng.uniform(-0.1, 0.1), arm_l=(rng.uniform(0.3, 1.2), -0.3), arm_r=(rng.uniform(0.3, 1.2), -0.3))


def _reach(arm_angle: float) -> float:
    """Horizontal distance (in heights) from the body midline to the hand of an arm at this angle."""
    return SHOULDER_HALF + (ARM_UPPER + ARM_LOWER) * math.sin(arm_angle)


def render_image(plan: ImagePlan, seed: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """One privacy image and its person boxes (x0, y0, x1, y1), x1/y1 exclusive."""
    h, w = plan.image_size
    rng = item_rng(seed, plan.key, RENDER_STREAM)
    scene = make_scene(rng, height=h, width=w)
    looks = [sample_look(rng, traits) for traits in plan.people]
    count = len(plan.people)
    ground = h * rng.uniform(0.9, 0.97)
    states: list[FigureState] = []
    if count == 1:
        height = h * rng.uniform(0.62, 0.8)
        states.append(FigureState(x=w * rng.uniform(0.35, 0.65), ground_y=ground, height=height,
                                  pose=_static_pose(rng), facing=1 if rng.random() < 0.5 else -1))
    elif plan.grouped or plan.holding is not None:
        height = h * (rng.uniform(0.46, 0.56) if plan.grouped else rng.uniform(0.55, 0.68))
        hold_angle = 0.55
        spacing = 2 * _reach(hold_angle) * 0.98
        gaps = [spacing if plan.holding == (i, i + 1) else rng.uniform(0.5, 0.62) for i in range(count - 1)]
        total = sum(gaps) * height
        x = w / 2 - total / 2 + rng.uniform(-0.05, 0.05) * w
        for i in range(count):
            pose = _static_pose(rng)
            if plan.holding is not None and i == plan.holding[0]:
                pose.arm_r = (hold_angle, 0.0)
            if plan.holding is not None and i == plan.holding[1]:
                pose.arm_l = (hold_angle, 0.0)
            # Mirroring would swap which hand holds: holding people face the camera unmirrored.
            facing = 1 if plan.holding is not None and i in plan.holding else (1 if rng.random() < 0.5 else -1)
            states.append(FigureState(x=x, ground_y=ground + rng.uniform(-1.0, 1.0), height=height * rng.uniform(0.94, 1.04),
                                      pose=pose, facing=facing))
            if i < count - 1:
                x += gaps[i] * height
    else:
        # Two unrelated people: far apart, one farther back.
        height = h * rng.uniform(0.5, 0.62)
        left_first = rng.random() < 0.5
        for fx, depth in ((0.22, 0.0), (0.78, 0.12)):
            fx = fx if left_first else 1.0 - fx
            states.append(FigureState(x=w * fx, ground_y=ground - depth * h, height=height * (1.0 - depth),
                                      pose=_static_pose(rng), facing=1 if rng.random() < 0.5 else -1))
    canvas = scene.canvas.copy()
    boxes: list[tuple[int, int, int, int]] = []
    order = sorted(range(count), key=lambda i: states[i].ground_y)
    for i in order:
        box = clip_box(draw_person(canvas, states[i], looks[i]), w, h)
        if box is not None:
            boxes.append(box)
    if plan.holding is not None:
        a, b = plan.holding
        hand_a = pose_skeleton(states[a], looks[a].build).points["hand_r"]
        hand_b = pose_skeleton(states[b], looks[b].build).points["hand_l"]
        draw_hand_link(canvas, hand_a, hand_b, looks[a].skin, 0.05 * states[a].height)
    return downsample(canvas, h, w), sorted(boxes)


# --------------------------------------------------------------------------- anomaly scenes


def shanghaitech_scene(seed: int, scene: int, size: WorldSize) -> Scene:
    """The fixed camera of one ShanghaiTech-analogue scene (shared by all its videos)."""
    rng = item_rng(seed, shanghaitech_scene_key(scene), RENDER_STREAM)
    return make_scene(rng, height=size.frame_height, width=size.frame_width)


class _Placer:
    """Rows and heights for people in one scene."""

    def __init__(self, rng: np.random.Generator, scene: Scene) -> None:
        self.rng = rng
        self.scene = scene

    def row(self, *, near: bool = False) -> tuple[float, float]:
        """A feet row and the height of a person standing on it; ``near`` keeps to the front half."""
        lo, hi = self.scene.ground_rows()
        if near:
            lo = 0.5 * (lo + hi)
        ground = float(self.rng.uniform(lo, hi))
        return ground, self.scene.person_height(ground) * float(self.rng.uniform(0.92, 1.08))


def _approach(track: Track, *, arrive: int, x: float, direction: int) -> None:
    """A walk that brings the actor to ``x`` at frame ``arrive``, entering from off-screen if time allows."""
    distance = (x + track.margin) if direction > 0 else (track.frame_width + track.margin - x)
    start = max(0, arrive - int(math.ceil(distance / track.walk_speed)))
    track.add(start, arrive, "walk", x - direction * track.walk_speed * (arrive - start), direction)


def _event_tracks(event: AnomalyEvent, rng: np.random.Generator, placer: _Placer, *, num_frames: int,
                  width: int, height: int) -> tuple[list[Track], list[Projectile]]:
    s, e = event.start, event.end
    # Events happen in the front half of the scene so that their motion is large enough to see.
    ground, person_h = placer.row(near=True)
    if event.kind == "fight":
        meet = width * rng.uniform(0.3, 0.7)
        tracks = []
        for direction in (1, -1):
            track = Track(rng, ground_y=ground, height=person_h, frame_width=width)
            spot = meet - direction * 0.2 * person_h
            _approach(track, arrive=s, x=spot, direction=direction)
            track.add(s, e, "fight", spot, direction)
            track.add(e, num_frames, "walk", spot, -direction)
            tracks.append(track)
        return tracks, []
    track = Track(rng, ground_y=ground, height=person_h, frame_width=width)
    direction = 1 if rng.random() < 0.5 else -1
    if event.kind in ("fall", "run"):
        spot = width * rng.uniform(0.25, 0.75)
        _approach(track, arrive=s, x=spot, direction=direction)
        track.add(s, e, event.kind, spot, direction)
        x_end, heading = track.end_position(track.segments[-1])
        track.add(e, num_frames, "walk", x_end, heading)
        return [track], []
    if event.kind == "throw":
        spot = width * rng.uniform(0.2, 0.8)
        direction = 1 if spot < width / 2 else -1  # throw across the longer side
        track.add(0, s, "stand", spot, direction)
        track.add(s, e, "throw", spot, direction, period=int(rng.integers(12, 19)))
        track.add(e, num_frames, "stand", spot, direction)
        return [track], throw_projectiles(track, track.segments[1], rng, frame_height=height)
    raise ValueError(f"unknown anomaly kind {event.kind!r}")


def render_anomaly_video(plan: AnomalyVideoPlan, size: WorldSize, seed: int, scene: Scene | None = None) -> Rendered:
    """A long surveillance-style video: walkers and standers, plus the planned anomalous events."""
    h, w = size.frame_height, size.frame_width
    rng = item_rng(seed, plan.key, RENDER_STREAM)
    if scene is None:
        scene = make_scene(rng, height=h, width=w)
    placer = _Placer(rng, scene)
    looks = [sample_look(rng, traits) for traits in plan.people]
    n = plan.num_frames
    tracks: list[Track] = []
    projectiles: list[Projectile] = []
    for event in plan.events:
        event_tracks, event_projectiles = _event_tracks(event, rng, placer, num_frames=n, width=w, height=h)
        tracks.extend(event_tracks)
        projectiles.extend(event_projectiles)
    if len(tracks) != plan.n_event_actors:
        raise AssertionError(f"{plan.name}: {len(tracks)} event actors drawn, plan has {plan.n_event_actors}")

    # Standers: a calm chatting pair (close together, like fighters but not fighting) and loners.
    standers_left = plan.n_standers
    if plan.chat_pair:
        ground, person_h = placer.row()
        centre = w * rng.uniform(0.25, 0.75)
        for direction in (1, -1):
            track = Track(rng, ground_y=ground, height=person_h, frame_width=w)
            track.add(0, n, "stand", centre - direction * 0.3 * person_h, direction,
                      gesture=float(rng.uniform(0.2, 0.6)))
            tracks.append(track)
        standers_left -= 2
    for _ in range(standers_left):
        ground, person_h = placer.row()
        track = Track(rng, ground_y=ground, height=person_h, frame_width=w)
        track.add(0, n, "stand", w * rng.uniform(0.1, 0.9), 1 if rng.random() < 0.5 else -1)
        tracks.append(track)

    # Walkers cross the scene; some pause on the way.
    for _ in range(len(plan.people) - len(tracks)):
        ground, person_h = placer.row()
        track = Track(rng, ground_y=ground, height=person_h, frame_width=w)
        direction = 1 if rng.random() < 0.5 else -1
        crossing = (w + 2 * track.margin) / track.walk_speed
        enter = int(rng.integers(-int(crossing * 0.8), max(1, n - 10)))
        x_enter = -track.margin if direction > 0 else w + track.margin
        start = max(0, enter)
        x_start = x_enter + direction * track.walk_speed * (start - enter)
        pause_at = start + int(rng.integers(10, 60))
        x_pause = x_start + direction * track.walk_speed * (pause_at - start)
        if rng.random() < 0.3 and pause_at < n and 0.1 * w < x_pause < 0.9 * w:
            pause = int(rng.integers(15, 41))
            track.add(start, pause_at, "walk", x_start, direction)
            track.add(pause_at, min(n, pause_at + pause), "stand", x_pause, direction)
            track.add(min(n, pause_at + pause), n, "walk", x_pause, direction)
        else:
            track.add(start, n, "walk", x_start, direction)
        tracks.append(track)

    rows: list = []
    frames = []
    for t in range(n):
        people = []
        for track, look in zip(tracks, looks):
            state = track(t)
            if state is not None:
                people.append((state, look))
        frames.append(_draw_frame(scene, people, projectiles, t, rows))
    return Rendered(frames=frames, boxes=_boxes_array(rows))
