"""Static camera backgrounds: streets, parks, indoor halls and plazas, drawn procedurally.

A scene is drawn once per video (or once per camera for the ShanghaiTech analogue) on the
supersampled canvas; people are drawn over a copy of it every frame. Each scene has a
horizon row: people stand on the ground below it and shrink toward it (perspective).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .people import SUPERSAMPLE

SCENE_KINDS: tuple[str, ...] = ("street", "park", "hall", "plaza")


@dataclass(frozen=True)
class Scene:
    """A background (supersampled RGB canvas) and its ground geometry in output pixels."""

    canvas: np.ndarray
    horizon: float
    kind: str

    @property
    def height(self) -> int:
        return self.canvas.shape[0] // SUPERSAMPLE

    @property
    def width(self) -> int:
        return self.canvas.shape[1] // SUPERSAMPLE

    def ground_rows(self) -> tuple[float, float]:
        """Feet rows people may stand on: the lower part of the ground, in output pixels."""
        return (self.horizon + 0.45 * (self.height - self.horizon), self.height - 1.5)

    def person_height(self, ground_y: float) -> float:
        """Standing height at a feet row: 0.55 of the frame at the bottom, shrinking to the horizon."""
        scale = 0.55 * self.height / (self.height - self.horizon)
        return max(8.0, scale * (ground_y - self.horizon))


def _shade(colour, amount: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * amount, 0, 255)) for c in colour)  # type: ignore[return-value]


def _gradient(h: int, w: int, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return np.broadcast_to(img, (h, w, 3)).copy()


def make_scene(rng: np.random.Generator, *, height: int, width: int, kind: str | None = None) -> Scene:
    """A random background of the given kind (or a random kind), output size ``height x width``."""
    kind = kind or SCENE_KINDS[int(rng.integers(len(SCENE_KINDS)))]
    if kind not in SCENE_KINDS:
        raise ValueError(f"scene kind {kind!r} is not one of {SCENE_KINDS}")
    H, W = height * SUPERSAMPLE, width * SUPERSAMPLE
    horizon = float(rng.uniform(0.3, 0.45) * height)
    hz = int(horizon * SUPERSAMPLE)
    if kind == "hall":
        wall = rng.integers(120, 220, 3)
        floor = rng.integers(70, 160, 3)
        img = np.concatenate([
            _gradient(hz, W, _shade(wall, 1.05), _shade(wall, 0.9)),
            _gradient(H - hz, W, _shade(floor, 0.85), _shade(floor, 1.1)),
        ])
    else:
        sky_top = (int(rng.integers(90, 150)), int(rng.integers(150, 200)), int(rng.integers(200, 250)))
        ground = {"street": (110, 110, 115), "park": (70, 140, 60), "plaza": (170, 150, 120)}[kind]
        ground = tuple(int(np.clip(g + rng.integers(-20, 21), 0, 255)) for g in ground)
        img = np.concatenate([
            _gradient(hz, W, sky_top, (225, 230, 240)),
            _gradient(H - hz, W, _shade(ground, 0.8), _shade(ground, 1.1)),
        ])
    img = np.clip(img, 0, 255).astype(np.uint8)

    # Scenery behind the people: buildings, trees, doors, tiles.
    n_objects = int(rng.integers(3, 7))
    for _ in range(n_objects):
        x0 = int(rng.integers(-W // 8, W))
        w = int(rng.integers(W // 10, W // 3))
        if kind in ("street", "plaza"):
            top = int(rng.integers(hz // 5, max(hz // 5 + 1, hz - 4)))
            colour = tuple(int(c) for c in rng.integers(60, 200, 3))
            cv2.rectangle(img, (x0, top), (x0 + w, hz), colour, -1)
            win = tuple(int(c) for c in _shade(colour, 0.6))
            step = max(6, w // 4)
            for wx in range(x0 + 3, x0 + w - 4, step):
                for wy in range(top + 4, hz - 6, step):
                    cv2.rectangle(img, (wx, wy), (wx + step // 2, wy + step // 2), win, -1)
        elif kind == "park":
            trunk_x = x0 + w // 2
            crown = (int(rng.integers(30, 80)), int(rng.integers(100, 160)), int(rng.integers(30, 70)))
            cv2.rectangle(img, (trunk_x - 3, hz - w // 2), (trunk_x + 3, hz + 2), (90, 60, 35), -1)
            cv2.circle(img, (trunk_x, hz - w // 2), max(4, w // 3), crown, -1, cv2.LINE_AA)
        else:
            top = int(rng.integers(hz // 4, max(hz // 4 + 1, hz - 10)))
            colour = tuple(int(c) for c in rng.integers(40, 200, 3))
            cv2.rectangle(img, (x0, top), (x0 + w // 2, hz), colour, -1)
            cv2.rectangle(img, (x0, top), (x0 + w // 2, hz), _shade(colour, 0.6), 2)
    if kind in ("street", "plaza", "hall"):
        # Ground lines converging to the horizon give depth.
        line_colour = _shade(img[min(H - 1, hz + 4), W // 2].tolist(), 0.85)
        for i in range(-3, 5):
            cv2.line(img, (W // 2 + i * W // 10, hz), (W // 2 + i * W // 2, H), line_colour, 1, cv2.LINE_AA)
    # Fixed sensor-like texture so flat regions are not perfectly flat.
    noise = rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return Scene(canvas=img, horizon=horizon, kind=kind)
