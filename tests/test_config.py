from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from aux_code.config import (
    ConfigError,
    PathsConfig,
    RunConfig,
    config_hash,
    describe,
    load_config,
    opt,
    parse_cli,
    write_run_config,
)


@dataclass
class OptimSection:
    lr: float = opt(1e-3, "learning rate")
    epochs: int = opt(2, "epochs")
    betas: tuple[float, float] = opt((0.9, 0.999), "Adam betas")


@dataclass
class DemoConfig:
    """A stage schema used only by these tests."""

    paths: PathsConfig = opt(PathsConfig(), "paths")
    run: RunConfig = opt(RunConfig(), "run")
    optim: OptimSection = opt(OptimSection(), "optimiser")
    method: Literal["tedspad", "spact"] = opt("tedspad", "method")
    tag: str = opt("x", "a string")
    weights: Optional[str] = opt(None, "optional weights path")
    sizes: list[int] = opt([1, 2], "a list")

    def required_paths(self) -> list[str]:
        return ["vispr"]


@pytest.fixture()
def paths_file(tmp_path, monkeypatch):
    (tmp_path / "data" / "vispr").mkdir(parents=True)
    p = tmp_path / "paths.yaml"
    p.write_text("vispr: data/vispr\nruns: out/runs\n")
    monkeypatch.setenv("TEDSPAD_PATHS", str(p))
    return p


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_defaults_yaml_overrides_precedence(tmp_path, paths_file):
    f = write(tmp_path / "a.yaml", {"optim": {"lr": 0.5, "epochs": 3}, "tag": "yaml"})
    cfg = load_config(DemoConfig, f, ["optim.epochs=7", "tag=001"])
    assert cfg.optim.lr == 0.5 and cfg.optim.epochs == 7
    assert cfg.tag == "001"  # a str field keeps the text, not int 1
    assert cfg.optim.betas == (0.9, 0.999)


def test_yaml_exponent_string_becomes_float(tmp_path, paths_file):
    f = write(tmp_path / "a.yaml", "optim:\n  lr: 1e-4\n")
    assert yaml.safe_load(f.read_text())["optim"]["lr"] == "1e-4"  # the YAML 1.1 quirk itself
    cfg = load_config(DemoConfig, f)
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert load_config(DemoConfig, None, ["optim.lr=3e-5"]).optim.lr == pytest.approx(3e-5)


def test_unknown_key_names_key_and_file(tmp_path, paths_file):
    f = write(tmp_path / "bad.yaml", {"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr'.*bad.yaml"):
        load_config(DemoConfig, f)
    with pytest.raises(ConfigError, match=r"unknown key 'nope'.*command line"):
        load_config(DemoConfig, None, ["nope=1"])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("optim.epochs=2.5", r"optim.epochs = 2.5 .*must be int"),
        ("optim.lr=fast", r"optim.lr = fast .*must be float"),
        ("method=other", r"method = 'other' .*must be one of"),
        ("run.deterministic=maybe", r"run.deterministic = maybe .*must be bool"),
        ("sizes=[1,x]", r"sizes\[1\].*must be int"),
        ("optim=3", r"optim .*must be a section"),
        ("novalue", r"must look like key=value"),
    ],
)
def test_wrong_types_rejected(paths_file, override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(DemoConfig, None, [override])


def test_wrong_type_in_file_names_file(tmp_path, paths_file):
    f = write(tmp_path / "t.yaml", {"optim": {"epochs": "many"}})
    with pytest.raises(ConfigError, match=r"optim.epochs = 'many' \(from .*t.yaml\) must be int"):
        load_config(DemoConfig, f)


def test_base_inheritance_and_cycle(tmp_path, paths_file):
    write(tmp_path / "base.yaml", {"optim": {"lr": 0.1, "epochs": 5}, "tag": "base"})
    child = write(tmp_path / "child.yaml", {"_base_": "base.yaml", "optim": {"epochs": 9}})
    cfg = load_config(DemoConfig, child)
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.tag) == (0.1, 9, "base")
    write(tmp_path / "loop.yaml", {"_base_": "loop.yaml"})
    with pytest.raises(ConfigError, match="inherits itself"):
        load_config(DemoConfig, tmp_path / "loop.yaml")


def test_paths_only_from_paths_file(tmp_path, paths_file):
    f = write(tmp_path / "p.yaml", {"paths": {"vispr": "/elsewhere"}})
    with pytest.raises(ConfigError, match="belong in configs/paths.yaml"):
        load_config(DemoConfig, f)


def test_paths_relative_to_paths_file_and_overridable(tmp_path, paths_file, monkeypatch):
    cfg = load_config(DemoConfig)
    assert cfg.paths.vispr == str((tmp_path / "data" / "vispr").resolve())
    assert cfg.paths.runs == str((tmp_path / "out" / "runs").resolve())
    other = tmp_path / "v2"
    other.mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = load_config(DemoConfig, None, ["paths.vispr=v2"])
    assert cfg.paths.vispr == str(other.resolve())


def test_missing_dataset_root_stops_run(tmp_path, paths_file):
    paths_file.write_text("vispr: does/not/exist\n")
    with pytest.raises(ConfigError, match=r"paths.vispr = .*does/not/exist \(from .*paths.yaml\)"):
        load_config(DemoConfig)
    load_config(DemoConfig, check_paths=False)  # --print-config must still work


def test_unknown_key_in_paths_file(tmp_path, paths_file):
    paths_file.write_text("vispr: data/vispr\nucf_crim: x\n")
    with pytest.raises(ConfigError, match=r"unknown key 'paths.ucf_crim'"):
        load_config(DemoConfig)


def test_every_key_documented():
    lines = describe(DemoConfig)
    assert any(line.startswith("optim.lr: float = 0.001  # learning rate") for line in lines)
    from dataclasses import fields

    for f in fields(PathsConfig) + fields(RunConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"


def test_write_run_config_and_hash(tmp_path, paths_file):
    cfg = load_config(DemoConfig)
    write_run_config(cfg, tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["optim"]["lr"] == cfg.optim.lr
    version = json.loads((tmp_path / "run" / "version.json").read_text())
    assert "python" in version
    assert config_hash(cfg) == config_hash(load_config(DemoConfig))
    assert config_hash(cfg) != config_hash(load_config(DemoConfig, None, ["optim.lr=0.2"]))


def test_parse_cli_exits_with_message(paths_file, capsys):
    with pytest.raises(SystemExit) as e:
        parse_cli(DemoConfig, ["optim.lrr=1"], default_config=None, prog="demo")
    assert e.value.code == 2
    assert "unknown key 'optim.lrr'" in capsys.readouterr().err
    cfg = parse_cli(DemoConfig, ["optim.lr=0.25"], default_config=None, prog="demo")
    assert cfg.optim.lr == 0.25


def test_shipped_configs_load():
    """Every YAML under configs/ (but paths.yaml) parses against the schema of its stage."""
    from aux_code.config import PROJECT_ROOT
    from aux_code.stages import schema_for_config_file

    files = sorted(p for p in (PROJECT_ROOT / "configs").rglob("*.yaml") if p.name != "paths.yaml")
    for f in files:
        schema = schema_for_config_file(f)
        load_config(schema, f, check_paths=False)


def test_null_override_clears_an_optional_string(paths_file):
    cfg = load_config(DemoConfig, None, ["weights=w.pth"])
    assert cfg.weights == "w.pth"
    assert load_config(DemoConfig, None, ["weights=null"]).weights is None
    assert load_config(DemoConfig, None, ["tag=null"]).tag == "null"  # a plain str keeps the text


def test_every_config_file_named_in_docs_and_configs_exists():
    # Comments and docs tell users which file to run first; a renamed config must not leave them
    # pointing at nothing.
    import re

    from aux_code.config import PROJECT_ROOT

    texts = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md")),
             *sorted((PROJECT_ROOT / "configs").rglob("*.yaml")), *sorted((PROJECT_ROOT / "scripts").glob("*.py"))]
    named = {m for path in texts for m in re.findall(r"configs/[\w./-]+?\.yaml", path.read_text())}
    assert len(named) > 20
    placeholders = ("<", "*", "...")  # "configs/<stage>/x.yaml" and the like are patterns, not files
    missing = sorted(n for n in named if not any(p in n for p in placeholders) and not (PROJECT_ROOT / n).is_file())
    assert not missing, missing
