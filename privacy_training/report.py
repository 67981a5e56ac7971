"""What a finished stage-2 run leaves for people and for the reproduce script.

- results.json: headline test cMAP, per-attribute AP, macro F1, the selection (validation
  split, never test), the comparison with the raw run, image-level leakage, counts, cache
  and config hashes; written last and atomically by aux_code.fit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path



class CompareError(ValueError):
    """The raw run named by eval.compare_to cannot be read."""


def anonymizer_label(describe: Mapping) -> str:
    """Short human name of an anonymizer description: 'raw', 'downsample x4', 'unet (tedspad/best.pt)' ..."""
    method = describe.get("method", "?")
    if method == "downsample":
        return f"downsample x{describe.get('factor')}"
    if method == "blur":
        return f"blur k{describe.get('blur_kernel')} s{describe.get('blur_sigma')} ({describe.get('boxes')} boxes)"
    if method == "blacken":
        return f"blacken ({describe.get('boxes')} boxes)"
    if method == "unet":
        return f"unet ({describe.get('checkpoint')})"
    return str(method)


def privacy_reduction(raw_cmap: float, cmap: float) -> float:
    """Relative drop of cMAP against the raw-data run, in percent (positive = less leakage)."""
    if raw_cmap <= 0:
        raise CompareError(f"raw cMAP {raw_cmap} must be > 0 to compute a relative reduction")
    return 100.0 * (raw_cmap - cmap) / raw_cmap


def read_reference_cmap(path: Path) -> float:
    """Test cMAP of another privacy run's results.json."""
    if not path.is_file():
        raise CompareError(
            f"eval.compare_to: {path} does not exist; run the raw-data privacy evaluation first "
            f"(e.g. python -m privacy_training --config configs/synthetic/privacy/default.yaml) or set eval.compare_to=null"
        )
    try:
        data = json.loads(path.read_text())
        return float(data["test"]["cmap"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CompareError(f"eval.compare_to: {path} has no test cMAP (test.cmap): {type(e).__name__}: {e}") from None
