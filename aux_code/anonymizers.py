"""Every way the pipeline anonymizes a frame, behind one object the later stages share.

The privacy evaluation (stage 2) and the feature extraction (stage 3) must apply *the same*
transform for a method, or the trade-off plot compares different things. Both build it from
an :class:`AnonymizerSection` of their config with :func:`build_frame_anonymizer`:

==========  =====================================================================
method      what happens
==========  =====================================================================
raw         nothing (the utility model sees the original pixels)
unet        a trained fA (stage-1 checkpoint, model key ``anonymizer``)
downsample  average-pool by ``factor`` then bilinear back up: the paper's 2x (112 px)
            and 4x (56 px) baselines keep the model's input size
blur        Gaussian blur (kernel 13, sigma 10 in the paper) inside person boxes
blacken     person boxes set to black
face_blur   Gaussian blur inside the faces OpenCV's Haar frontal-face cascade finds (the
            baseline deployed systems use; the cascade ships with opencv-python-headless 4.x)
face_blacken  the same face boxes set to black
dpae        Giorgi et al.'s DP autoencoder: the camera's encoder, the code as it travels
            (float16), the server's decoder (files ``encoder`` / ``decoder``)
==========  =====================================================================

Two phases, because they act at different resolutions:

* :meth:`FrameAnonymizer.apply_boxes` works on frames at their *original* resolution, where
  person boxes (ground truth or a detector's) are given in pixels; identity for methods
  without boxes.
* :attr:`FrameAnonymizer.model` is an ``nn.Module`` on frames at model resolution, after
  the shared crop and resize: the UNet, the down/up sampler, or the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from aux_code.checkpoint import file_digest
from aux_code.config import ConfigError, opt, resolve_under
from aux_code.models.anonymizer import IdentityAnonymizer

__all__ = [
    "AnonymizerSection",
    "FrameAnonymizer",
    "HOGPersonDetector",
    "HaarFaceDetector",
    "haar_face_cascade",
    "Downsample",
    "build_frame_anonymizer",
    "gaussian_kernel1d",
    "blur_boxes",
    "blacken_boxes",
    "box_mask",
    "anonymized_grey_frames",
]

Method = Literal["raw", "unet", "downsample", "blur", "blacken", "dpae", "face_blur", "face_blacken"]
# Methods that edit boxes at the original resolution: what the boxes are, and which edit.
PERSON_BOX_METHODS = ("blur", "blacken")
FACE_BOX_METHODS = ("face_blur", "face_blacken")
BLUR_METHODS = ("blur", "face_blur")
HAAR_FRONTAL_FACE = "haarcascade_frontalface_default.xml"


@dataclass
class AnonymizerSection:
    """Which anonymization a stage applies before its model (raw, trained fA, or a baseline)."""

    method: Method = opt("raw", "raw | unet (trained fA) | downsample | blur (person boxes) | blacken (person boxes) | dpae (DP autoencoder round trip) | face_blur / face_blacken (faces the Haar cascade finds).")
    checkpoint: Optional[str] = opt(
        None,
        "method unet: stage-1 checkpoint holding the anonymizer, e.g. anonymization/tedspad/best.pt; "
        "a relative path resolves under paths.runs.",
    )
    model_key: str = opt("anonymizer", "method unet: key of the anonymizer inside the checkpoint's 'models'.")
    encoder: Optional[str] = opt(
        None, "method dpae: the camera's encoder file of a DP-AE run, e.g. dpae/dp_adam/encoder.pt (under paths.runs)."
    )
    decoder: Optional[str] = opt(
        None, "method dpae: the server's decoder file trained with that encoder, e.g. dpae/dp_adam/decoder.pt (under paths.runs)."
    )
    factor: int = opt(2, "method downsample: integer factor (2 = the paper's 112 px, 4 = 56 px at 224 input).")
    blur_kernel: int = opt(13, "methods blur / face_blur: Gaussian kernel size in pixels (odd; 13 in the paper).")
    blur_sigma: float = opt(10.0, "methods blur / face_blur: Gaussian sigma in pixels (10 in the paper).")
    boxes: Literal["gt", "hog"] = opt(
        "gt",
        "methods blur/blacken: where person boxes come from: 'gt' (the dataset's ground-truth boxes; only the "
        "synthetic world has them) or 'hog' (OpenCV's HOG people detector, for real data).",
    )
    face_min_side: int = opt(
        384,
        "methods face_blur / face_blacken: before the Haar cascade looks, an image whose short side is below this is "
        "upscaled (bilinear) until it reaches it, and the boxes are mapped back; the cascade's smallest face is "
        "24x24 px, so small images (the synthetic world's 80-96 px) find faces only upscaled. 0: never upscale.",
    )
    face_min_neighbors: int = opt(
        5, "methods face_blur / face_blacken: Haar detectMultiScale minNeighbors (higher: fewer, surer faces)."
    )
    face_margin: float = opt(
        0.2,
        "methods face_blur / face_blacken: each face box grows by this fraction of its side on every side (the "
        "cascade's box is tight around eyes and mouth; 0: the box as found).",
    )

    def validate(self) -> None:
        if self.method == "unet" and not self.checkpoint:
            raise ConfigError("anonymizer.method = unet needs anonymizer.checkpoint (a stage-1 checkpoint)")
        if self.method == "dpae" and not (self.encoder and self.decoder):
            raise ConfigError("anonymizer.method = dpae needs anonymizer.encoder and anonymizer.decoder (a DP-AE run's "
                              "encoder.pt and decoder.pt)")
        if self.method == "downsample" and self.factor < 2:
            raise ConfigError(f"anonymizer.factor = {self.factor} must be >= 2 for method downsample")
        if self.method in BLUR_METHODS and (self.blur_kernel < 1 or self.blur_kernel % 2 == 0 or self.blur_sigma <= 0):
            raise ConfigError(
                f"anonymizer.blur_kernel = {self.blur_kernel} must be odd and >= 1 and anonymizer.blur_sigma = "
                f"{self.blur_sigma} > 0"
            )
        if self.method in FACE_BOX_METHODS and (self.face_min_side < 0 or self.face_min_neighbors < 0 or self.face_margin < 0):
            raise ConfigError(
                f"anonymizer.face_min_side = {self.face_min_side}, anonymizer.face_min_neighbors = "
                f"{self.face_min_neighbors} and anonymizer.face_margin = {self.face_margin} must all be >= 0"
            )


class Downsample(nn.Module):
    """(N, C, H, W) -> (N, C, H, W): average-pool by ``factor``, then bilinear back to H x W.

    The information is that of an (H/factor) x (W/factor) image while every later model keeps
    its input size, which is how the paper's Downsample-2x/4x baselines feed a 224 px I3D.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"Downsample factor {factor} must be >= 1")
        self.factor = int(factor)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if self.factor == 1:
            return frames
        h, w = frames.shape[-2:]
        # ceil_mode keeps a last partial row/column instead of dropping it on odd sizes.
        low = F.avg_pool2d(frames, self.factor, ceil_mode=True)
        return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def gaussian_kernel1d(kernel: int, sigma: float) -> torch.Tensor:
    """Normalised 1D Gaussian taps, shape (kernel,)."""
    x = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    return (taps / taps.sum()).float()


def _gaussian_blur(frames: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflected borders (zero padding darkens edges)."""
    taps = gaussian_kernel1d(kernel, sigma).to(frames)
    c = frames.shape[1]
    pad = kernel // 2
    # Reflect padding needs pad < size; very small frames fall back to replicate.
    mode = "reflect" if min(frames.shape[-2:]) > pad else "replicate"
    x = F.pad(frames, (pad, pad, pad, pad), mode=mode)
    x = F.conv2d(x, taps.view(1, 1, 1, kernel).expand(c, 1, 1, kernel), groups=c)
    return F.conv2d(x, taps.view(1, 1, kernel, 1).expand(c, 1, kernel, 1), groups=c)


def box_mask(boxes: Sequence[np.ndarray], height: int, width: int) -> torch.Tensor:
    """(N, 1, H, W) bool mask of the union of each frame's boxes (x0, y0, x1, y1; x1/y1 exclusive)."""
    mask = torch.zeros(len(boxes), 1, height, width, dtype=torch.bool)
    for i, frame_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in np.asarray(frame_boxes, dtype=np.int64).reshape(-1, 4):
            x0, y0 = max(int(x0), 0), max(int(y0), 0)
            x1, y1 = min(int(x1), width), min(int(y1), height)
            if x1 > x0 and y1 > y0:
                mask[i, 0, y0:y1, x0:x1] = True
    return mask


def _check_boxes(frames: torch.Tensor, boxes: Sequence[np.ndarray]) -> None:
    if frames.dim() != 4:
        raise ValueError(f"expected frames (N, C, H, W), got shape {tuple(frames.shape)}")
    if len(boxes) != frames.shape[0]:
        raise ValueError(f"got {len(boxes)} box lists for {frames.shape[0]} frames; expected one per frame")


def blur_boxes(frames: torch.Tensor, boxes: Sequence[np.ndarray], *, kernel: int = 13, sigma: float = 10.0) -> torch.Tensor:
    """Frames (N, C, H, W) with the inside of every person box Gaussian-blurred; the rest untouched."""
    _check_boxes(frames, boxes)
    mask = box_mask(boxes, *frames.shape[-2:]).to(frames.device)
    if not mask.any():
        return frames.clone()
    return torch.where(mask, _gaussian_blur(frames, kernel, sigma), frames)


def blacken_boxes(frames: torch.Tensor, boxes: Sequence[np.ndarray]) -> torch.Tensor:
    """Frames (N, C, H, W) with every person box set to 0 (black)."""
    _check_boxes(frames, boxes)
    mask = box_mask(boxes, *frames.shape[-2:]).to(frames.device)
    return frames.masked_fill(mask, 0.0)


class HOGPersonDetector:
    """OpenCV's default HOG + linear SVM people detector (Dalal & Triggs), the shipped default.

    The detector's window is 64x128 px, so small frames are upscaled until their short side is
    at least ``min_side`` before detection and the boxes are mapped back.
    """

    def __init__(self, *, min_side: int = 256, hit_threshold: float = 0.0) -> None:
        try:
            import cv2
        except ImportError as e:  # pragma: no cover - cv2 is a core dependency
            raise ImportError("the HOG person detector needs opencv-python-headless==4.14.0.94") from e
        if not hasattr(cv2, "HOGDescriptor"):
            raise ImportError("this OpenCV build has no HOGDescriptor; install opencv-python-headless==4.14.0.94")
        self._cv2 = cv2
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.min_side = min_side
        self.hit_threshold = hit_threshold

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> int32 (n, 4) boxes x0, y0, x1, y1 in the image's pixels."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"HOG detector expects an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        scale = max(1.0, self.min_side / min(h, w))
        work = image
        if scale > 1.0:
            work = self._cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=self._cv2.INTER_LINEAR)
        gray = self._cv2.cvtColor(work, self._cv2.COLOR_RGB2GRAY)
        rects, _ = self._hog.detectMultiScale(gray, hitThreshold=self.hit_threshold, winStride=(8, 8), padding=(8, 8), scale=1.05)
        if len(rects) == 0:
            return np.zeros((0, 4), dtype=np.int32)
        rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        x0, y0 = rects[:, 0] / scale, rects[:, 1] / scale
        x1, y1 = (rects[:, 0] + rects[:, 2]) / scale, (rects[:, 1] + rects[:, 3]) / scale
        out = np.stack([np.floor(x0), np.floor(y0), np.ceil(x1), np.ceil(y1)], axis=1)
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
        return out.astype(np.int32)


@lru_cache(maxsize=1)
def haar_face_cascade() -> Any:
    """OpenCV's frontal-face Haar cascade (loaded once per process)."""
    import cv2

    path = cv2.data.haarcascades + HAAR_FRONTAL_FACE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(
            f"OpenCV could not load {path}; the Haar cascades ship with opencv-python-headless 4.x "
            f"(pinned to 4.14.0.94), not with the 5.0 wheels"
        )
    return cascade


def grow_boxes(boxes: np.ndarray, margin: float, height: int, width: int) -> np.ndarray:
    """int (n, 4) boxes x0, y0, x1, y1 grown by ``margin`` times their width / height on every side,
    clipped to the image, as int32 (n, 4) (outer pixels: floor of the low corner, ceil of the high)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    dx, dy = margin * (b[:, 2] - b[:, 0]), margin * (b[:, 3] - b[:, 1])
    out = np.stack([np.floor(b[:, 0] - dx), np.floor(b[:, 1] - dy), np.ceil(b[:, 2] + dx), np.ceil(b[:, 3] + dy)], axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out.astype(np.int32)


class HaarFaceDetector:
    """OpenCV's shipped frontal-face Haar cascade (Viola-Jones), what deployed face blurring uses.

    An image whose short side is below ``min_side`` is upscaled until it reaches it (the cascade's
    smallest window is 24x24 px); the boxes are mapped back to the image's pixels and grown by
    ``margin`` (see :func:`grow_boxes`). ``scale_factor`` 1.1 is OpenCV's documented default.
    """

    def __init__(self, *, min_side: int = 384, min_neighbors: int = 5, margin: float = 0.2, scale_factor: float = 1.1) -> None:
        import cv2

        self._cv2 = cv2
        self._cascade = haar_face_cascade()
        self.min_side, self.min_neighbors, self.margin, self.scale_factor = min_side, min_neighbors, margin, scale_factor

    def describe(self) -> dict:
        """What decides the boxes (the OpenCV version too: another cascade release finds other faces)."""
        return {"detector": "haar_frontalface_default", "opencv": self._cv2.__version__, "min_side": self.min_side,
                "min_neighbors": self.min_neighbors, "margin": self.margin, "scale_factor": self.scale_factor}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> int32 (n, 4) face boxes x0, y0, x1, y1 in the image's pixels."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"Haar face detector expects an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        scale = max(1.0, self.min_side / min(h, w)) if self.min_side > 0 else 1.0
        work = np.ascontiguousarray(image)
        if scale > 1.0:
            work = self._cv2.resize(work, (round(w * scale), round(h * scale)), interpolation=self._cv2.INTER_LINEAR)
        gray = self._cv2.cvtColor(work, self._cv2.COLOR_RGB2GRAY)
        found = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors)
        if len(found) == 0:
            return np.zeros((0, 4), dtype=np.int32)
        r = np.asarray(found, dtype=np.float64).reshape(-1, 4) / scale
        return grow_boxes(np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], axis=1), self.margin, h, w)


Detector = Callable[[np.ndarray], np.ndarray]


class FrameAnonymizer:
    """One anonymization method, ready to apply (see the module docstring for the two phases)."""

    def __init__(self, section: AnonymizerSection, model: nn.Module, description: dict, *,
                 detector: Detector | None = None) -> None:
        """``detector``: the box detector of a box method (RGB uint8 (H, W, 3) -> int (n, 4) boxes); None: the
        method's own (HOG people for blur / blacken, the Haar face cascade for face_blur / face_blacken),
        built on first use. Ground-truth boxes (``boxes: gt``) never go through it."""
        self.section = section
        self.method = section.method
        self.model = model.eval()
        self._description = description
        self._detector: Detector | None = detector

    @property
    def needs_boxes(self) -> bool:
        return self.method in PERSON_BOX_METHODS + FACE_BOX_METHODS

    @property
    def box_kind(self) -> str | None:
        """'person' or 'face' for box methods, None otherwise."""
        if self.method in PERSON_BOX_METHODS:
            return "person"
        return "face" if self.method in FACE_BOX_METHODS else None

    @property
    def box_source(self) -> str | None:
        """Where a box method's boxes come from: 'gt' (the dataset's) or 'hog' for blur / blacken
        (anonymizer.boxes), 'haar' for the face methods; None for methods without boxes. Every
        source but 'gt' means :meth:`detect` (an injected detector stands in for HOG / Haar)."""
        if not self.needs_boxes:
            return None
        return self.section.boxes if self.method in PERSON_BOX_METHODS else "haar"

    def detect(self, image: np.ndarray) -> np.ndarray:
        """Boxes of one RGB uint8 (H, W, 3) image by the method's detector (see __init__), int32 (n, 4)."""
        if self._detector is None:
            self._detector = default_detector(self.section)
        return np.asarray(self._detector(image), dtype=np.int32).reshape(-1, 4)

    def apply_boxes(self, frames: torch.Tensor, boxes: Sequence[np.ndarray] | None) -> torch.Tensor:
        """Original-resolution frames (N, C, H, W) in [0, 1] -> the same with boxes blurred/blackened.

        ``boxes``: one int (n_i, 4) array per frame (x0, y0, x1, y1); ignored (may be None) for
        methods without boxes.
        """
        if not self.needs_boxes:
            return frames
        if boxes is None:
            raise ValueError(f"anonymizer method {self.method!r} needs {self.box_kind} boxes for every frame; got none")
        if self.method in BLUR_METHODS:
            return blur_boxes(frames, boxes, kernel=self.section.blur_kernel, sigma=self.section.blur_sigma)
        return blacken_boxes(frames, boxes)

    def describe(self) -> dict:
        """Plain data naming exactly this transform (method, parameters, checkpoint digest)."""
        return dict(self._description)

    def __repr__(self) -> str:
        return f"FrameAnonymizer({self._description})"


def default_detector(section: AnonymizerSection) -> Detector:
    """The box detector a box method uses when none is injected: HOG people or the Haar face cascade."""
    if section.method in FACE_BOX_METHODS:
        return HaarFaceDetector(min_side=section.face_min_side, min_neighbors=section.face_min_neighbors,
                                margin=section.face_margin)
    if section.method in PERSON_BOX_METHODS:
        return HOGPersonDetector()
    raise ValueError(f"anonymizer method {section.method!r} has no boxes, hence no box detector")


def _detector_description(detector: Detector) -> dict:
    describe = getattr(detector, "describe", None)
    return describe() if callable(describe) else {"detector": f"injected {type(detector).__qualname__}"}


def build_frame_anonymizer(
    section: AnonymizerSection, *, runs_root: str | Path, device: torch.device | str = "cpu",
    detector: Detector | None = None,
) -> FrameAnonymizer:
    """The anonymizer a config section describes; a unet checkpoint is loaded strictly.

    ``runs_root``: ``paths.runs``, against which a relative checkpoint path resolves. ``detector``:
    replaces a box method's own detector (tests inject a stub; see FrameAnonymizer); it is named in
    the description, so its images never share a cache entry with the real detector's.
    """
    section.validate()
    method = section.method
    description: dict = {"method": method}
    model: nn.Module
    if method == "unet":
        from aux_code.models.stored import load_stored_model

        path = resolve_under(runs_root, section.checkpoint)
        model, spec = load_stored_model(path, section.model_key, config_key="anonymizer.checkpoint")
        description.update(checkpoint=str(section.checkpoint), model_key=section.model_key, digest=file_digest(path), spec=spec)
    elif method == "dpae":
        from aux_code.latent_codes import load_pair

        model, pair = load_pair(resolve_under(runs_root, section.encoder), resolve_under(runs_root, section.decoder))
        description.update(encoder=str(section.encoder), decoder=str(section.decoder), **pair)
    elif method == "downsample":
        model = Downsample(section.factor)
        description.update(factor=section.factor)
    else:
        model = IdentityAnonymizer()
        if method == "blur":
            description.update(blur_kernel=section.blur_kernel, blur_sigma=section.blur_sigma, boxes=section.boxes)
        elif method == "blacken":
            description.update(boxes=section.boxes)
        elif method in FACE_BOX_METHODS:
            if method == "face_blur":
                description.update(blur_kernel=section.blur_kernel, blur_sigma=section.blur_sigma)
            # Built now (a missing cascade fails before any work), and its settings name the boxes.
            detector = detector if detector is not None else default_detector(section)
            description.update(boxes="haar", **_detector_description(detector))
        if detector is not None and method in PERSON_BOX_METHODS and section.boxes != "gt":
            description.update(_detector_description(detector))
    for p in model.parameters():
        p.requires_grad_(False)
    return FrameAnonymizer(section, model.to(device), description, detector=detector)


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the weights of PIL's "L" conversion the grey releases were made with


@torch.no_grad()
def anonymized_grey_frames(
    frames: Iterable[np.ndarray], anonymizer: FrameAnonymizer, size: tuple[int, int], *,
    boxes: Sequence[np.ndarray] | None = None, device: torch.device | str = "cpu", chunk: int = 32,
) -> Iterator[np.ndarray]:
    """RGB uint8 ``(h, w, 3)`` frames -> float32 ``size`` = (H, W) grey frames in [-1, 1], anonymized.

    What a grey-input detector (LUSS-AE) sees of an anonymized camera: the method's boxes edited at
    the original resolution (``boxes``: one (n, 4) array per frame, for box methods), a bilinear
    antialiased resize to ``size``, the method's model at that size, luma, then 8-bit rounding, as
    the grey releases store frames. Streams ``chunk`` frames at a time (memory flat in length).
    """
    h, w = size
    buffer: list[np.ndarray] = []
    seen = 0

    def flush() -> Iterator[np.ndarray]:
        nonlocal seen
        x = rearrange(torch.from_numpy(np.stack(buffer)), "n h w c -> n c h w").to(device).float().div_(255.0)
        if anonymizer.needs_boxes:
            if boxes is None or len(boxes) < seen + len(buffer):
                raise ValueError(f"anonymizer method {anonymizer.method!r} needs {anonymizer.box_kind} boxes for "
                                 f"frames {seen}-{seen + len(buffer) - 1}; got {0 if boxes is None else len(boxes)} box lists")
            x = anonymizer.apply_boxes(x, boxes[seen:seen + len(buffer)])
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        x = anonymizer.model(x.clamp(0.0, 1.0)).clamp(0.0, 1.0)
        grey = torch.einsum("nchw,c->nhw", x, torch.tensor(LUMA, device=x.device, dtype=x.dtype))
        grey = (grey * 255.0).round_().div_(127.5).sub_(1.0)
        seen += len(buffer)
        buffer.clear()
        yield from grey.cpu().numpy().astype(np.float32)

    for f in frames:
        if f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"expected RGB frames (h, w, 3), got shape {f.shape} at frame {seen + len(buffer)}")
        buffer.append(f)
        if len(buffer) == chunk:
            yield from flush()
    if buffer:
        yield from flush()
