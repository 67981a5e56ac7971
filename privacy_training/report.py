"""What a finished stage-2 run leaves for people and for the reproduce script.

- results.json: headline test cMAP, per-attribute AP, macro F1, the selection (validation
  split, never test), the comparison with the raw run, image-level leakage, counts, cache
  and config hashes; written last and atomically by aux_code.fit;
- test_predictions.npz: the test split's per-image labels and the selected model's logits,
  exactly those the test cMAP was computed from (the reproduce script's bootstrap intervals
  resample these images; see :func:`save_test_predictions`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from aux_code.checkpoint import atomic_write

PREDICTIONS = "test_predictions.npz"

def save_test_predictions(path: Path, labels: np.ndarray, logits: np.ndarray, attributes: Sequence[str]) -> None:
    """The test split's labels (N, A) int8 0/1 and logits (N, A) float64, with the attribute names (A,) str.

    Loads with np.load(path) (no pickle); ``cmap(labels, logits)`` is the run's test cMAP.
    """
    y, x = np.asarray(labels), np.asarray(logits, dtype=np.float64)
    if y.shape != x.shape or y.ndim != 2 or y.shape[1] != len(attributes):
        raise ValueError(f"save_test_predictions: labels {y.shape}, logits {x.shape} and {len(attributes)} attributes disagree")
    arrays = {"labels": y.astype(np.int8), "logits": x, "attributes": np.array(list(attributes), dtype=str)}
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


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
