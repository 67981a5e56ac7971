"""What a finished stage-2 run leaves for people and for the reproduce script.

- results.json: headline test cMAP, per-attribute AP, macro F1, the selection (validation
  split, never test), the comparison with the raw run, image-level leakage, counts, cache
  and config hashes; written last and atomically;
- results.md: one Markdown table row in the columns of RESULTS_MD_HEADER.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from aux_code.checkpoint import atomic_write_json, atomic_write_text

RESULTS_MD_HEADER = (
    "| run | task | anonymizer | test cMAP | chance cMAP | macro F1 | privacy reduction % | val cMAP (epoch) "
    "| SSIM | PSNR dB | faces before/after | config |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


class CompareError(ValueError):
    """The raw run named by eval.compare_to cannot be read."""


def write_results(run_dir: Path, results: Mapping) -> None:
    """results.md first, then results.json (the 'done' marker) last."""
    atomic_write_text(run_dir / "results.md", results_md_row(results) + "\n")
    atomic_write_json(run_dir / "results.json", results)


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


def results_md_row(results: Mapping) -> str:
    pct = lambda x: "n/a" if x is None else f"{100.0 * x:.2f}"  # noqa: E731
    test = results["test"]
    sel = results["selection"]
    leak = results.get("leakage") or {}
    sim = leak.get("similarity") or {}
    faces = leak.get("faces") or {}
    reduction = results.get("privacy_reduction_pct")
    cells = [
        results["run"],
        results["task"],
        results["anonymizer_label"],
        pct(test["cmap"]),
        pct(test["chance_cmap"]),
        pct(test["macro_f1"]),
        "n/a" if reduction is None else f"{reduction:.2f}",
        f"{pct(sel['value'])} ({sel['epoch']})",
        "n/a" if not sim else f"{sim['ssim']:.4f}",
        "n/a" if not sim else ("inf" if sim["psnr_db"] is None else f"{sim['psnr_db']:.2f}"),
        "n/a" if not faces else f"{faces['before']['faces']}/{faces['after']['faces']}",
        results["config_hash"],
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"
