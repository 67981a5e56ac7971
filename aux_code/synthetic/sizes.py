"""How big the synthetic world is: frame size, video lengths and item counts per dataset."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class WorldSize:
    """Every count and size of one generated world.

    Frames are ``frame_height x frame_width`` RGB (both even, as H.264 4:2:0 needs); at the
    default 80x96 a centre crop of scale 0.8 is 64x76, which a loader resizes to 64x64.
    Video lengths are drawn uniformly from the inclusive ``(low, high)`` ranges.
    """

    frame_height: int = 80
    frame_width: int = 96
    # VISPR-style still images vary in size like the real photos: (height, width) choices.
    image_sizes: tuple[tuple[int, int], ...] = ((80, 96), (96, 80), (88, 88))

    # UCF101 analogue: classes x groups x clips, the first `test_groups` groups form testlist01.
    # Group g is the same people and place in every class; 12 groups leave a tiny fT trained
    # from scratch enough unseen people to learn motion rather than faces and backgrounds.
    action_classes: int = 10
    groups_per_class: int = 12
    clips_per_group: int = 3
    test_groups: int = 3
    action_frames: tuple[int, int] = (64, 112)

    # VISPR analogue.
    # 1000 test images bring the raw method's cMAP 95% interval to a half-width of about 2
    # points (300 gave 3); test images are cheap at 32 px, train stays at 600.
    vispr_train: int = 600
    vispr_test: int = 1000

    # Anomaly datasets: (abnormal, normal) video counts per split.
    anomaly_frames: tuple[int, int] = (96, 320)
    # Test videos are shorter and many: a frame AUC's interval is a bootstrap over whole test
    # videos, so its width falls with their number, not their length (20 + 20 videos of up to
    # 320 frames gave a half-width of about 6 AUC points; 150 + 150 short ones gave 2.0-2.3 per
    # MGFN seed, so 240 + 240 aim at the goal of 2 with the seed spread on top).
    anomaly_test_frames: tuple[int, int] = (96, 160)
    # MGFN learns from weak video labels: 20 + 20 training videos left it noisy (60-75 AUC on
    # motion features whose plain norm scored 0.89); 60 + 60 is enough to learn from.
    ucf_crime_train: tuple[int, int] = (60, 60)
    ucf_crime_test: tuple[int, int] = (240, 240)
    xd_violence_train: tuple[int, int] = (12, 12)
    xd_violence_test: tuple[int, int] = (6, 6)
    shanghaitech_scenes: int = 3
    shanghaitech_train: tuple[int, int] = (8, 16)
    shanghaitech_test: tuple[int, int] = (8, 8)

    def validate(self) -> None:
        for name in ("frame_height", "frame_width"):
            value = getattr(self, name)
            if value < 32 or value % 2:
                raise ValueError(f"WorldSize.{name} = {value} must be even and >= 32")
        for h, w in self.image_sizes:
            if h < 32 or w < 32 or h % 2 or w % 2:
                raise ValueError(f"WorldSize.image_sizes entry {(h, w)} must be even and >= 32 on both sides")
        if not self.image_sizes:
            raise ValueError("WorldSize.image_sizes must name at least one (height, width)")
        from .plan import ACTION_CLASSES

        if not 2 <= self.action_classes <= len(ACTION_CLASSES):
            raise ValueError(f"WorldSize.action_classes = {self.action_classes} must be in [2, {len(ACTION_CLASSES)}]")
        if not 1 <= self.test_groups < self.groups_per_class:
            raise ValueError(
                f"WorldSize.test_groups = {self.test_groups} must be >= 1 and below groups_per_class = "
                f"{self.groups_per_class} (train needs groups too)"
            )
        if self.clips_per_group < 1:
            raise ValueError(f"WorldSize.clips_per_group = {self.clips_per_group} must be >= 1")
        low, high = self.action_frames
        if not 64 <= low <= high:
            raise ValueError(f"WorldSize.action_frames = {self.action_frames} must satisfy 64 <= low <= high")
        for name in ("anomaly_frames", "anomaly_test_frames"):
            low, high = getattr(self, name)
            if not 96 <= low <= high:
                # 96 frames leave room for a >= 40-frame event with normal context on both sides.
                raise ValueError(f"WorldSize.{name} = {(low, high)} must satisfy 96 <= low <= high")
        if self.vispr_train < 2 or self.vispr_test < 2:
            raise ValueError("WorldSize.vispr_train and vispr_test must be >= 2")
        for f in fields(self):
            if f.name.endswith(("_train", "_test")) and isinstance(getattr(self, f.name), tuple):
                abnormal, normal = getattr(self, f.name)
                if abnormal < 1 or normal < 1:
                    raise ValueError(f"WorldSize.{f.name} = {(abnormal, normal)} needs >= 1 abnormal and >= 1 normal video")
        if self.shanghaitech_scenes < 1:
            raise ValueError("WorldSize.shanghaitech_scenes must be >= 1")
        if self.shanghaitech_test[1] < 2:
            raise ValueError("WorldSize.shanghaitech_test needs >= 2 normal videos (one from each original folder)")


PRESETS: dict[str, WorldSize] = {
    # For tests: every dataset present with a few items; a few seconds to generate.
    "tiny": WorldSize(
        action_classes=4,
        groups_per_class=2,
        clips_per_group=2,
        test_groups=1,
        action_frames=(64, 72),
        vispr_train=24,
        vispr_test=12,
        anomaly_frames=(96, 128),
        anomaly_test_frames=(96, 128),
        ucf_crime_train=(2, 2),
        ucf_crime_test=(2, 2),
        xd_violence_train=(2, 1),
        xd_violence_test=(2, 1),
        shanghaitech_scenes=2,
        shanghaitech_train=(1, 2),
        shanghaitech_test=(2, 2),
    ),
    # The embedded default: enough for the pipeline's models to learn something.
    "default": WorldSize(),
}


def world_size(name: str) -> WorldSize:
    if name not in PRESETS:
        raise ValueError(f"unknown world size {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]
