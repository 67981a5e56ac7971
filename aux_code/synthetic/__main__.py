"""Command line: ``python -m aux_code.synthetic --out data/synthetic [--size tiny|default] [--seed 0]``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import PROJECT_ROOT
from .generate import WorldExistsError, generate_world
from .sizes import PRESETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aux_code.synthetic",
        description="Generate the synthetic world: UCF101, VISPR, UCF-Crime, XD-Violence and ShanghaiTech "
                    "analogues in the real datasets' file formats, plus summary.json and preview.png.",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "data" / "synthetic",
                        help="world root (default: data/synthetic of the project, where configs/paths.yaml points)")
    parser.add_argument("--size", choices=sorted(PRESETS), default="default", help="world size preset")
    parser.add_argument("--seed", type=int, default=0, help="world seed: the same seed gives the same plan and labels (videos: see tests/test_synthetic.py)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes rendering items in parallel (output does not depend on it)")
    parser.add_argument("--force", action="store_true", help="replace a world already under --out")
    parser.add_argument("--no-preview", action="store_true", help="skip preview.png")
    args = parser.parse_args(argv)
    try:
        generate_world(args.out, size=args.size, seed=args.seed, workers=max(1, args.workers), force=args.force,
                       preview=not args.no_preview)
    except WorldExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
