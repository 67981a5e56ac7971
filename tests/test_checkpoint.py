from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from aux_code.checkpoint import (
    CheckpointError,
    file_digest,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
    strip_prefixes,
)


def test_atomic_save_roundtrip_and_format_version(tmp_path):
    model = nn.Linear(3, 2)
    path = save_checkpoint({"model": model.state_dict(), "epoch": 4, "config": {"lr": 0.1}}, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    data = load_checkpoint(path)
    assert data["epoch"] == 4 and data["format_version"] == 1
    assert torch.equal(data["model"]["weight"], model.weight)


def test_failed_save_keeps_previous_file(tmp_path):
    path = save_checkpoint({"a": torch.ones(1)}, tmp_path / "c.pt")
    with pytest.raises((pickle.PicklingError, AttributeError)):  # which one depends on the pickler path
        save_checkpoint({"bad": lambda: 0}, path)  # lambdas cannot be serialised
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


class Opaque:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": Opaque()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)


def test_missing_file_names_config_key(tmp_path):
    with pytest.raises(CheckpointError, match=r"anonymizer checkpoint \(model.weights\) .*nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt", what="anonymizer checkpoint", config_key="model.weights")


def test_non_dict_and_garbage(tmp_path):
    torch.save(torch.zeros(2), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "t.pt")
    (tmp_path / "g.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be loaded"):
        load_checkpoint(tmp_path / "g.pt")


def test_strip_prefixes_ddp_and_compile():
    sd = {"module._orig_mod.fc.weight": 1, "module._orig_mod.fc.bias": 2}
    assert strip_prefixes(sd) == {"fc.weight": 1, "fc.bias": 2}
    mixed = {"module.a": 1, "b": 2}
    assert strip_prefixes(mixed) == mixed  # only stripped when every key has it


def test_strict_load_lists_every_problem():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd.pop("1.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["0.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(model, sd, source="file x.pt", expected_layout="torchvision names")
    msg = str(e.value)
    assert "file x.pt does not fit Sequential (expected key layout: torchvision names)" in msg
    assert "missing keys: 1.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "0.weight: file (5, 5) vs model (2, 3)" in msg


def test_strict_load_ignore_missing_head():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    sd = {"module.0.weight": torch.ones(2, 3), "module.0.bias": torch.ones(2)}
    load_state_dict_strict(model, sd, source="s", ignore_missing=("1.",))
    assert torch.equal(model[0].weight, torch.ones(2, 3))


def test_file_digest_changes_with_content(tmp_path):
    a = save_checkpoint({"x": torch.zeros(1)}, tmp_path / "a.pt")
    b = save_checkpoint({"x": torch.ones(1)}, tmp_path / "b.pt")
    assert file_digest(a) != file_digest(b) and len(file_digest(a)) == 16
