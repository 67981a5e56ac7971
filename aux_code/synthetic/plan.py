"""The world plan: every item's labels, lengths, events and people, decided before any pixel.

Planning is cheap and separate from rendering, so label statistics (attribute rates per
action class, anomaly fractions) can be checked without drawing anything. Every item gets
its own generator derived from (seed, dataset, item keys), so an item's plan and pixels do
not depend on how many other items exist or in which order they are made.

Privacy traits are drawn from their own streams, never conditioned on an action class or
an anomaly: attributes are independent of what people do by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

import numpy as np

from ..datasets.vispr import VISPR_ATTRIBUTES
from ..datasets.xd_violence import XD_CATEGORIES
from .motion import ACTION_PROGRAMS
from .people import FACE_STATES, PersonTraits, sample_traits
from .sizes import WorldSize

ACTION_CLASSES: tuple[str, ...] = tuple(ACTION_PROGRAMS)

# Anomaly kinds (motion programs) and the class names they carry in each dataset.
ANOMALY_KINDS: tuple[str, ...] = ("fight", "fall", "run", "throw")
UCF_CRIME_CLASSES: dict[str, str] = {"Fighting": "fight", "Falling": "fall", "Running": "run", "Throwing": "throw"}
XD_CODES: dict[str, str] = {"fight": "B1", "throw": "B4"}

MIN_EVENT_FRAMES = 40  # > 32, so that a 16-frame clip at skip 2 fits inside every event
MAX_EVENT_FRAMES = 120
FPS = {"ucf101": 25, "ucf_crime": 30, "xd_violence": 24, "shanghaitech": 24}

# Dataset codes in the seed derivation; fixed forever so that worlds stay reproducible.
_UCF101, _VISPR, _UCF_CRIME, _XD, _SH, _SH_SCENE = 1, 2, 3, 4, 5, 6
PLAN_STREAM, RENDER_STREAM, TRAITS_STREAM = 0, 1, 2

# VISPR image-level positive rates (labels are drawn first, people are made to match).
VISPR_RATES: dict[str, float] = {
    "gender": 0.45, "complete_face": 0.5, "partial_face": 0.3, "semi_nudity": 0.35,
    "skin_color": 0.4, "personal_relationship": 0.35, "social_relationship": 0.3,
}


def item_rng(seed: int, key: tuple[int, ...], stream: int) -> np.random.Generator:
    """The generator of one item and purpose: independent of every other item's."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(key) + (stream,)))


def person_attributes(people: Iterable[PersonTraits]) -> np.ndarray:
    """The five person-level VISPR-7 attributes of a group: 1 when anyone shows the trait."""
    people = list(people)
    return np.array([
        any(p.feminine for p in people),
        any(p.face == "complete" for p in people),
        any(p.face == "partial" for p in people),
        any(p.exposed_skin for p in people),
        any(p.dark_skin for p in people),
    ], dtype=np.float32)


# --------------------------------------------------------------------------- UCF101 analogue

COMPANION_LAYOUTS: tuple[str, ...] = ("alone", "distant", "pair", "group", "pair_group")
_LAYOUT_PROBS = (0.4, 0.15, 0.2, 0.15, 0.1)
_LAYOUT_COMPANIONS = {"alone": 0, "distant": 1, "pair": 1, "group": 2, "pair_group": 3}


@dataclass(frozen=True)
class ActionClipPlan:
    class_index: int
    class_name: str
    group: int
    clip: int
    num_frames: int
    test_in_split: tuple[bool, bool, bool]
    people: tuple[PersonTraits, ...]
    layout: str
    key: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"v_{self.class_name}_g{self.group:02d}_c{self.clip:02d}"

    @property
    def relative_path(self) -> str:
        return f"{self.class_name}/{self.name}.avi"

    def attributes(self) -> np.ndarray:
        """Video-level VISPR-7 vector: person traits of everyone in view plus the layout."""
        out = np.zeros(len(VISPR_ATTRIBUTES), dtype=np.float32)
        out[:5] = person_attributes(self.people)
        out[5] = float(self.layout in ("pair", "pair_group"))
        out[6] = float(self.layout in ("group", "pair_group"))
        return out


def plan_ucf101(size: WorldSize, seed: int) -> list[ActionClipPlan]:
    clips = []
    for class_index, class_name in enumerate(ACTION_CLASSES[: size.action_classes]):
        for group in range(1, size.groups_per_class + 1):
            # Group g has the same people in every class (each performs every action, as in KTH):
            # with a few groups per class, per-class people would let appearance name the class.
            traits_rng = item_rng(seed, (_UCF101, group), TRAITS_STREAM)
            layout = COMPANION_LAYOUTS[int(traits_rng.choice(len(COMPANION_LAYOUTS), p=_LAYOUT_PROBS))]
            people = tuple(sample_traits(traits_rng) for _ in range(1 + _LAYOUT_COMPANIONS[layout]))
            # Split k (1..3) tests on its own block of groups, like UCF101's three splits.
            blocks = max(1, size.groups_per_class // size.test_groups)
            test_in_split = tuple(
                (k % blocks) * size.test_groups < group <= (k % blocks + 1) * size.test_groups for k in range(3)
            )
            for clip in range(1, size.clips_per_group + 1):
                key = (_UCF101, class_index, group, clip)
                rng = item_rng(seed, key, PLAN_STREAM)
                clips.append(ActionClipPlan(
                    class_index=class_index, class_name=class_name, group=group, clip=clip,
                    num_frames=int(rng.integers(size.action_frames[0], size.action_frames[1] + 1)),
                    test_in_split=test_in_split, people=people, layout=layout, key=key,
                ))
    return clips


# --------------------------------------------------------------------------- VISPR analogue


@dataclass(frozen=True)
class ImagePlan:
    image_id: str
    split: str
    labels: tuple[int, ...]
    people: tuple[PersonTraits, ...]
    holding: tuple[int, int] | None  # indices of a pair holding hands
    grouped: bool                    # people stand together as a group
    image_size: tuple[int, int]      # (height, width)
    key: tuple[int, ...]


def _traits_for_image(rng: np.random.Generator, labels: dict[str, int], count: int) -> tuple[PersonTraits, ...]:
    """People whose combined traits give exactly the image-level labels."""

    def flags(name: str) -> list[bool]:
        if not labels[name]:
            return [False] * count
        values = [bool(rng.random() < 0.5) for _ in range(count)]
        values[int(rng.integers(count))] = True
        return values

    feminine = flags("gender")
    exposed = flags("semi_nudity")
    dark = flags("skin_color")
    allowed = [s for s in FACE_STATES if s == "hidden" or labels[f"{s}_face"]]
    faces = [allowed[int(rng.integers(len(allowed)))] for _ in range(count)]
    order = [int(i) for i in rng.permutation(count)]
    if labels["complete_face"]:
        faces[order[0]] = "complete"
    if labels["partial_face"]:
        faces[order[-1] if labels["complete_face"] else order[0]] = "partial"
    return tuple(
        PersonTraits(feminine=feminine[i], face=faces[i], exposed_skin=exposed[i], dark_skin=dark[i])
        for i in range(count)
    )


def plan_vispr(size: WorldSize, seed: int) -> list[ImagePlan]:
    out = []
    id_rng = item_rng(seed, (_VISPR, 0), PLAN_STREAM)
    total = size.vispr_train + size.vispr_test
    # Real VISPR ids look like 2017_10024876: unique random numbers, unrelated to labels.
    numbers = id_rng.choice(90_000_000, size=total, replace=False) + 10_000_000
    for index in range(total):
        split = "train" if index < size.vispr_train else "test"
        key = (_VISPR, 1, index)
        rng = item_rng(seed, key, PLAN_STREAM)
        labels = {name: int(rng.random() < VISPR_RATES[name]) for name in VISPR_ATTRIBUTES}
        if labels["social_relationship"]:
            count = 4 if rng.random() < 0.3 else 3
        elif labels["personal_relationship"]:
            count = 2
        elif labels["complete_face"] and labels["partial_face"]:
            count = 2  # one face of each kind needs two people
        else:
            count = 2 if rng.random() < 0.25 else 1
        holding = None
        if labels["personal_relationship"]:
            first = int(rng.integers(count - 1))
            holding = (first, first + 1)
        people = _traits_for_image(rng, labels, count)
        image_size = size.image_sizes[int(rng.integers(len(size.image_sizes)))]
        out.append(ImagePlan(
            image_id=f"2017_{int(numbers[index]):08d}", split=split,
            labels=tuple(labels[name] for name in VISPR_ATTRIBUTES), people=people, holding=holding,
            grouped=bool(labels["social_relationship"]), image_size=image_size, key=key,
        ))
    return out


# --------------------------------------------------------------------------- anomaly datasets


@dataclass(frozen=True)
class AnomalyEvent:
    """An anomaly in frames ``[start, end)``."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class AnomalyVideoPlan:
    dataset: str
    split: str
    name: str
    relative_path: str
    class_name: str
    num_frames: int
    events: tuple[AnomalyEvent, ...]
    scene: int | None                 # a fixed camera (ShanghaiTech) or None: the video's own scene
    people: tuple[PersonTraits, ...]  # event actors first, then standers, then walkers
    n_event_actors: int
    n_standers: int
    chat_pair: bool
    key: tuple[int, ...]

    @property
    def label(self) -> int:
        return int(bool(self.events))

    @property
    def fps(self) -> int:
        return FPS[self.dataset]

    def frame_labels(self) -> np.ndarray:
        labels = np.zeros(self.num_frames, dtype=np.uint8)
        for event in self.events:
            labels[event.start:event.end] = 1
        return labels

    def attributes(self) -> np.ndarray:
        return person_attributes(self.people)


def _plan_events(rng: np.random.Generator, num_frames: int, kinds: list[str]) -> tuple[AnomalyEvent, ...]:
    """One or two events of >= MIN_EVENT_FRAMES with normal context around them."""
    lead, tail, gap = 16, 8, 24
    two = len(kinds) == 2 or (num_frames >= 2 * MIN_EVENT_FRAMES + lead + tail + gap + 40 and rng.random() < 0.3)
    count = 2 if two and num_frames >= 2 * MIN_EVENT_FRAMES + lead + tail + gap else 1
    if len(kinds) < count:
        kinds = kinds + [kinds[0]] * (count - len(kinds))
    room = num_frames - lead - tail - (count - 1) * gap
    longest = min(MAX_EVENT_FRAMES, room // count)
    lengths = [int(rng.integers(MIN_EVENT_FRAMES, longest + 1)) for _ in range(count)]
    slack = room - sum(lengths)
    cuts = sorted(int(c) for c in rng.integers(0, slack + 1, size=count))
    events = []
    position = lead
    previous_cut = 0
    for i in range(count):
        position += cuts[i] - previous_cut
        previous_cut = cuts[i]
        events.append(AnomalyEvent(kind=kinds[i], start=position, end=position + lengths[i]))
        position += lengths[i] + gap
    return tuple(events)


def _plan_video(
    *, seed: int, key: tuple[int, ...], dataset: str, split: str, name: str, relative_path: str,
    class_name: str, kinds: list[str], size: WorldSize, scene: int | None,
) -> AnomalyVideoPlan:
    rng = item_rng(seed, key, PLAN_STREAM)
    low, high = size.anomaly_test_frames if split == "test" else size.anomaly_frames
    num_frames = int(rng.integers(low, high + 1))
    events = _plan_events(rng, num_frames, kinds) if kinds else ()
    n_event_actors = sum(2 if e.kind == "fight" else 1 for e in events)
    chat_pair = bool(rng.random() < 0.35)
    n_standers = int(rng.integers(0, 2)) + (2 if chat_pair else 0)
    # The head count is drawn the same way for normal and abnormal videos and the event actors
    # come out of it, so that "more people" never signals an anomaly.
    n_people = n_standers + 3 + int(rng.poisson(num_frames / 100))
    n_walkers = max(0, n_people - n_standers - n_event_actors)
    traits_rng = item_rng(seed, key, TRAITS_STREAM)
    people = tuple(sample_traits(traits_rng) for _ in range(n_event_actors + n_standers + n_walkers))
    return AnomalyVideoPlan(
        dataset=dataset, split=split, name=name, relative_path=relative_path, class_name=class_name,
        num_frames=num_frames, events=events, scene=scene, people=people, n_event_actors=n_event_actors,
        n_standers=n_standers, chat_pair=chat_pair, key=key,
    )


def plan_ucf_crime(size: WorldSize, seed: int) -> list[AnomalyVideoPlan]:
    out = []
    classes = list(UCF_CRIME_CLASSES)
    per_class: dict[str, list[str]] = {c: [] for c in classes}
    for split, (abnormal, _) in (("train", size.ucf_crime_train), ("test", size.ucf_crime_test)):
        for i in range(abnormal):
            per_class[classes[i % len(classes)]].append(split)
    number_rng = item_rng(seed, (_UCF_CRIME, 0), PLAN_STREAM)
    for class_index, class_name in enumerate(classes):
        splits = per_class[class_name]
        # Real UCF-Crime numbers a class's videos across both splits (Abuse001 train, Abuse028 test).
        numbers = number_rng.permutation(len(splits)) + 1
        for i, (split, number) in enumerate(zip(splits, numbers)):
            stem = f"{class_name}{int(number):03d}_x264"
            out.append(_plan_video(
                seed=seed, key=(_UCF_CRIME, 1, class_index, i), dataset="ucf_crime", split=split, name=stem,
                relative_path=f"{class_name}/{stem}.mp4", class_name=class_name,
                kinds=[UCF_CRIME_CLASSES[class_name]], size=size, scene=None,
            ))
    for split, (_, normal) in (("train", size.ucf_crime_train), ("test", size.ucf_crime_test)):
        folder = "Training_Normal_Videos_Anomaly" if split == "train" else "Testing_Normal_Videos_Anomaly"
        for i in range(normal):
            stem = f"Normal_Videos{i + 1:03d}_x264" if split == "train" else f"Normal_Videos_{i + 1:03d}_x264"
            out.append(_plan_video(
                seed=seed, key=(_UCF_CRIME, 2, 0 if split == "train" else 1, i), dataset="ucf_crime", split=split,
                name=stem, relative_path=f"{folder}/{stem}.mp4", class_name="Normal", kinds=[], size=size, scene=None,
            ))
    return out


def _xd_name(rng: np.random.Generator, index: int, codes: list[str]) -> str:
    minute = int(rng.integers(0, 60))
    second = int(rng.integers(0, 50))
    padded = (codes + ["0", "0", "0"])[:3]
    return (
        f"Synthetic.Street.Cam{index:03d}.2024__#00-{minute:02d}-{second:02d}_00-{minute:02d}-{second + 9:02d}"
        f"_label_{'-'.join(padded)}"
    )


def plan_xd_violence(size: WorldSize, seed: int) -> list[AnomalyVideoPlan]:
    out = []
    index = 0
    for split_code, (split, (abnormal, normal)) in enumerate(
        (("train", size.xd_violence_train), ("test", size.xd_violence_test))
    ):
        for i in range(abnormal + normal):
            key = (_XD, split_code, i)
            rng = item_rng(seed, key + (7,), PLAN_STREAM)
            if i < abnormal:
                r = rng.random()
                kinds = ["fight"] if r < 0.45 else ["throw"] if r < 0.9 else ["fight", "throw"]
            else:
                kinds = []
            plan = _plan_video(
                seed=seed, key=key, dataset="xd_violence", split=split, name="", relative_path="",
                class_name="", kinds=kinds, size=size, scene=None,
            )
            event_kinds = sorted({e.kind for e in plan.events}, key=list(XD_CODES).index)
            codes = [XD_CODES[k] for k in event_kinds] or ["A"]
            index += 1
            stem = _xd_name(rng, index, codes)
            class_name = "+".join(XD_CATEGORIES[c] for c in codes)
            out.append(replace(plan, name=stem, relative_path=f"{split}/{stem}.mp4", class_name=class_name))
    return out


def plan_shanghaitech(size: WorldSize, seed: int) -> list[AnomalyVideoPlan]:
    """Zhong et al.'s split: training-folder normals (NN_MMM) and testing-folder videos (NN_MMMM) in both lists."""
    out = []
    scenes = size.shanghaitech_scenes
    train_abnormal, train_normal = size.shanghaitech_train
    test_abnormal, test_normal = size.shanghaitech_test
    # (split, abnormal?, from the original training folder?)
    roles = (
        [("train", True, False)] * train_abnormal
        + [("train", False, True)] * train_normal
        + [("test", True, False)] * test_abnormal
        + [("test", False, False)] * (test_normal - test_normal // 2)
        + [("test", False, True)] * (test_normal // 2)
    )
    counters: dict[tuple[int, bool], int] = {}
    for i, (split, abnormal, training_folder) in enumerate(roles):
        scene = i % scenes + 1
        number = counters.get((scene, training_folder), 0) + 1
        counters[(scene, training_folder)] = number
        # Original ShanghaiTech: training videos NN_MMM, test videos NN_MMMM.
        stem = f"{scene:02d}_{number:03d}" if training_folder else f"{scene:02d}_{number:04d}"
        folder = "training/videos" if training_folder else "testing/videos"
        key = (_SH, i)
        kinds_rng = item_rng(seed, key + (7,), PLAN_STREAM)
        kinds = [ANOMALY_KINDS[int(kinds_rng.integers(len(ANOMALY_KINDS)))]] if abnormal else []
        out.append(_plan_video(
            seed=seed, key=key, dataset="shanghaitech", split=split, name=stem,
            relative_path=f"{folder}/{stem}.avi", class_name="Abnormal" if abnormal else "Normal",
            kinds=kinds, size=size, scene=scene,
        ))
    return out


@dataclass(frozen=True)
class WorldPlan:
    size: WorldSize
    seed: int
    ucf101: list[ActionClipPlan]
    vispr: list[ImagePlan]
    ucf_crime: list[AnomalyVideoPlan]
    xd_violence: list[AnomalyVideoPlan]
    shanghaitech: list[AnomalyVideoPlan]

    def anomaly_plans(self) -> list[AnomalyVideoPlan]:
        return self.ucf_crime + self.xd_violence + self.shanghaitech


def plan_world(size: WorldSize, seed: int) -> WorldPlan:
    """Every item of every dataset, labels and all; no rendering."""
    size.validate()
    return WorldPlan(
        size=size, seed=seed,
        ucf101=plan_ucf101(size, seed), vispr=plan_vispr(size, seed),
        ucf_crime=plan_ucf_crime(size, seed), xd_violence=plan_xd_violence(size, seed),
        shanghaitech=plan_shanghaitech(size, seed),
    )


def shanghaitech_scene_key(scene: int) -> tuple[int, ...]:
    return (_SH_SCENE, scene)
