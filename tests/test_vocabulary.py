"""One config vocabulary: a key has one meaning (one help text) in every stage that has it."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import get_type_hints

import pytest

from aux_code.config import parse_cli
from aux_code.sections import HELP
from aux_code.stages import STAGES, schema_for_stage


def _keys(schema: type, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    hints = get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_keys(hints[f.name], prefix + f.name + "."))
        else:
            out[prefix + f.name] = f.metadata.get("help", "")
    return out


STAGE_KEYS = {stage: _keys(schema_for_stage(stage)) for stage in STAGES}


def test_no_two_stages_document_one_key_with_different_meanings():
    seen: dict[str, dict[str, str]] = defaultdict(dict)
    for stage, keys in STAGE_KEYS.items():
        for key, text in keys.items():
            seen[key][stage] = text
    clashes = {key: by_stage for key, by_stage in seen.items() if len(set(by_stage.values())) > 1}
    assert not clashes, "keys documented differently across stages:\n" + "\n".join(
        f"{key}: " + "; ".join(f"{s}: {t!r}" for s, t in by.items()) for key, by in sorted(clashes.items())
    )


def test_shared_keys_use_the_shared_meaning():
    for stage, keys in STAGE_KEYS.items():
        for key, text in keys.items():
            leaf = key.rsplit(".", 1)[-1]
            if key in HELP:
                assert text == HELP[key], (stage, key)
            elif leaf in HELP and key.startswith("clip."):
                assert text == HELP[leaf], (stage, key)
            elif leaf in ("validation_fraction", "validation_seed"):
                assert text == HELP[leaf], (stage, key)


def test_the_old_names_are_gone():
    old = {"data.size", "data.val_fraction", "data.val_seed", "clips.clip_len", "probe.clip_length", "optim.amp",
           "optim.warmup_epochs", "optim.plateau_patience", "extract.precision", "optim.precision", "probe.checkpoint"}
    for stage, keys in STAGE_KEYS.items():
        assert not old & set(keys), (stage, old & set(keys))


@pytest.mark.parametrize("stage, expected", [
    ("anonymization", ["clip.resolution", "schedule.warmup_epochs", "precision", "data.privacy_validation_fraction"]),
    ("privacy", ["clip.resolution", "utility.checkpoint", "schedule.plateau_patience", "data.validation_fraction"]),
    ("extraction", ["clip.clip_len", "utility.checkpoint", "precision"]),
    ("anomaly", ["schedule.warmup_epochs", "precision", "data.validation_fraction"]),
])
def test_help_config_shows_the_shared_sections(stage, expected, capsys):
    with pytest.raises(SystemExit) as done:
        parse_cli(schema_for_stage(stage), ["--help-config"], default_config=None, prog=stage)
    assert done.value.code == 0
    shown = capsys.readouterr().out
    for key in expected:
        line = next(line for line in shown.splitlines() if line.startswith(key + ":"))
        leaf = key.rsplit(".", 1)[-1]
        meaning = HELP.get(key) or (HELP.get(leaf) if key.startswith("clip.") or "validation" in leaf else None)
        if meaning:
            assert meaning in line, (stage, key)
