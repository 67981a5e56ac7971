"""One typed configuration schema for every stage.

Schemas are dataclasses whose fields are declared with :func:`opt` (a default plus a help
string). A config is built from, in order of precedence (last wins):

1. the dataclass defaults,
2. a stage YAML file (which may inherit other files through ``_base_: other.yaml``),
3. the paths file (``configs/paths.yaml``, or the file named by ``$TEDSPAD_PATHS``),
   which alone may set the ``paths`` section,
4. ``key=value`` overrides with dotted keys (``optim.lr=1e-4 paths.vispr=/data/vispr``).

Unknown keys, values of the wrong type and dataset roots that do not exist raise
:class:`ConfigError` naming the key and the file it came from, before any work starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATHS_FILE = PROJECT_ROOT / "configs" / "paths.yaml"
PATHS_ENV_VAR = "TEDSPAD_PATHS"
COMMAND_LINE = "the command line"

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem found before any work started."""


def opt(default: Any, help: str) -> Any:
    """A documented config field. Mutable defaults (lists, dicts, dataclasses) are copied."""
    if is_dataclass(default) and not isinstance(default, type):
        factory = lambda d=default: dataclasses.replace(d)  # noqa: E731
        return field(default_factory=factory, metadata={"help": help})
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class PathsConfig:
    """Every dataset root and output root. Set these only in configs/paths.yaml."""

    ucf101: str = opt("data/synthetic/UCF101", "UCF101 root: Videos/<Class>/v_*.avi and ucfTrainTestlist/.")
    vispr: str = opt("data/synthetic/VISPR", "VISPR privacy split root: train2017/, test2017/ and {train,test}_labels.pkl (or .json).")
    ucf_crime: str = opt("data/synthetic/UCF_Crime", "UCF-Crime root: Videos/<Class>/*_x264.mp4 and the split/annotation files.")
    xd_violence: str = opt("data/synthetic/XD_Violence", "XD-Violence root: train/, test/ and annotations.txt.")
    shanghaitech: str = opt("data/synthetic/ShanghaiTech", "ShanghaiTech weakly supervised root: training/videos, testing/videos, testing/test_frame_mask, SH_Train.txt / SH_Test.txt.")
    ped2: str = opt("data/synthetic/UCSDped2", "UCSD Ped2 root (UCSDped2/): Train/TrainNNN/*.tif, Test/TestNNN/*.tif, Test/UCSDped2.m and/or Test/TestNNN_gt/ masks.")
    avenue: str = opt("data/synthetic/Avenue", "CUHK Avenue root: training_videos/*.avi, testing_videos/*.avi, ground_truth_demo/testing_label_mask/N_label.mat.")
    shanghaitech_unsupervised: str = opt("data/synthetic/ShanghaiTech_unsupervised", "ShanghaiTech unsupervised-split root: training/videos/*.avi, testing/frames/<video>/*.jpg, testing/test_frame_mask/*.npy.")
    synthetic: str = opt("data/synthetic", "Where `python -m aux_code.synthetic` writes the generated world.")
    weights: str = opt("weights", "Directory of local pretrained weight files; relative 'weights:' entries resolve here.")
    runs: str = opt("runs", "Root of every run directory and of the artifacts passed between stages.")
    results: str = opt("results", "Where the reproduce script writes tables, plots and the summary JSON.")


@dataclass
class RunConfig:
    """What every stage needs to run: where, with which seed, on which device. The subclasses add the
    run.* keys only some stages honour, so --help-config never lists a key its stage ignores."""

    name: str = opt("default", "Run name; the run directory is <paths.runs>/<stage>/<name>.")
    seed: int = opt(0, "Seed for python, numpy, torch and DataLoader workers (rank is added).")
    deterministic: bool = opt(False, "Use deterministic algorithms for exact reruns (slower).")
    device: str = opt("auto", "'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    resume: bool = opt(True, "Continue from the last checkpoint in the run directory if there is one.")


@dataclass
class TrainRunConfig(RunConfig):
    """A training stage's run keys: the loop logs step metrics."""

    log_every: int = opt(10, "Log training metrics every N steps (0: epoch records only).")


@dataclass
class LoaderRunConfig(RunConfig):
    """A stage that reads its data through worker processes."""

    num_workers: int = opt(0, "Data-loading worker processes (0 = load in the main process).")


@dataclass
class LoaderTrainRunConfig(TrainRunConfig):
    """Stage 1: a training stage that reads clips through worker processes."""

    num_workers: int = opt(0, "Data-loading worker processes (0 = load in the main process).")


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path, what: str = "config file") -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory; expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} cannot be read: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def _merge(dst: dict, src: dict, origins: dict, source: str, prefix: str = "") -> None:
    """Deep-merge src into dst, recording for each leaf key which file set it."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origins, source, dotted + ".")
        else:
            dst[key] = json.loads(json.dumps(value)) if isinstance(value, (dict, list)) else value
            origins[dotted] = source
            for sub in _leaf_keys(value, dotted):
                origins[sub] = source


def flatten_mapping(tree: typing.Mapping[str, Any], *, sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (``sep`` joins the keys)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, typing.Mapping):
            out.update(flatten_mapping(value, sep=sep, prefix=f"{prefix}{key}{sep}"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _leaf_keys(value: Any, prefix: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    out = []
    for k, v in value.items():
        out.append(f"{prefix}.{k}")
        out.extend(_leaf_keys(v, f"{prefix}.{k}"))
    return out


def _load_stage_file(path: Path, origins: dict, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config file {path} inherits itself through _base_")
    raw = _read_yaml(path)
    bases = raw.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        _merge(merged, _load_stage_file(path.parent / base, origins, seen + (path,)), origins, str(path.parent / base))
    # A dotted 'paths.runs:' key is the same setting: refuse it here, where the stage file can be blamed.
    setting = next((k for k in raw if k == "paths" or str(k).startswith("paths.")), None)
    if setting is not None:
        raise ConfigError(
            f"config file {path} sets {setting!r}; a stage config may not set paths: dataset and output paths belong "
            f"in configs/paths.yaml (or the file named by ${PATHS_ENV_VAR}), or in paths.<key>=... overrides"
        )
    _merge(merged, raw, origins, str(path))
    return merged


def paths_file() -> Path:
    """The paths file in force: $TEDSPAD_PATHS if set, else configs/paths.yaml."""
    env = os.environ.get(PATHS_ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_PATHS_FILE


def _load_paths(path: Path, origins: dict) -> dict:
    what = f"paths file (${PATHS_ENV_VAR})" if os.environ.get(PATHS_ENV_VAR) else "paths file"
    raw = _read_yaml(path, what)
    if not raw:
        # Every root would silently fall back to the defaults: never what an (emptied) paths file meant.
        raise ConfigError(f"{what} {path} is empty; it must set the dataset and output roots (see configs/paths.yaml)")
    known = {f.name for f in fields(PathsConfig)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key 'paths.{key}' in {path}; known keys: {', '.join(sorted(known))}")
    resolved = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise ConfigError(f"paths.{key} in {path} must be a string path, got {value!r}")
        p = Path(value).expanduser()
        # Relative entries are relative to the paths file, so the file can move with its data.
        resolved[key] = str(p if p.is_absolute() else (path.parent / p).resolve())
        origins[f"paths.{key}"] = str(path)
    return resolved


def _parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} on {COMMAND_LINE} must look like key=value (dotted keys allowed)")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} on {COMMAND_LINE} has an empty key")
    return key, value


def _apply_override(data: dict, key: str, raw: str, origins: dict) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}={raw} on {COMMAND_LINE}: '{part}' is not a section")
    # Keep the raw text; _coerce parses it against the declared type (so str fields keep '001').
    node[parts[-1]] = _RawOverride(raw)
    origins[key] = COMMAND_LINE


class _RawOverride(str):
    """A value typed on the command line, parsed only once its target type is known."""


# --------------------------------------------------------------------------- typing


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, origins: dict) -> Any:
    where = origins.get(key, "the defaults")
    origin = get_origin(tp)
    args = get_args(tp)

    # Show command-line values as typed, file values as YAML read them.
    shown = str(value) if isinstance(value, _RawOverride) else repr(value)

    def fail(msg: str | None = None) -> ConfigError:
        return ConfigError(msg or f"{key} = {shown} (from {where}) must be {_type_name(tp)}")

    if isinstance(value, _RawOverride):
        # key=null clears an optional field, string-typed ones included.
        if origin in (typing.Union, types.UnionType) and type(None) in args and str(value) in ("null", "~"):
            return None
        if tp is str or (origin in (typing.Union, types.UnionType) and str in args):
            return str(value)
        try:
            value = yaml.safe_load(str(value))
        except yaml.YAMLError:
            raise fail() from None

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, origins)
            except ConfigError:
                pass
        raise fail()
    if origin is Literal:
        if value not in args:
            raise fail(f"{key} = {value!r} (from {where}) must be one of {', '.join(map(repr, args))}")
        return value
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"{key} (from {where}) must be a section (mapping), got {value!r}")
        return _build(tp, value, origins, key + ".")
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if tp is float:
        if isinstance(value, bool):
            raise fail()
        try:
            # YAML 1.1 reads '1e-4' (no dot) as a string; accept any text float() accepts.
            number = float(value) if isinstance(value, (int, float, str)) else None
        except ValueError:
            number = None
        if number is None:
            raise fail()
        if not math.isfinite(number):
            # No setting of this project means anything at inf or nan (an lr of inf trains to NaN).
            raise fail(f"{key} = {shown} (from {where}) must be a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise fail()
            return tuple(_coerce(v, a, f"{key}[{i}]", origins) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]", origins) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, key, origins): _coerce(v, vt, f"{key}.{k}", origins) for k, v in value.items()}
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)} in the schema")


def _build(schema: type[T], data: dict, origins: dict, prefix: str = "") -> T:
    hints = get_type_hints(schema)
    known = {f.name: f for f in fields(schema) if f.init}
    for key in data:
        if key not in known:
            where = origins.get(f"{prefix}{key}", "the config")
            raise ConfigError(
                f"unknown key '{prefix}{key}' (from {where}); known keys in "
                f"'{prefix.rstrip('.') or 'top level'}': {', '.join(sorted(known))}"
            )
    kwargs = {}
    for name in known:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{prefix}{name}", origins)
    obj = schema(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj


def load_config(
    schema: type[T],
    config_file: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    *,
    check_paths: bool = True,
) -> T:
    """Build a ``schema`` instance from defaults, a YAML file, the paths file and overrides.

    When ``check_paths`` is true and the schema has a ``required_paths()`` method, each
    named ``paths.<key>`` must exist on disk.
    """
    origins: dict[str, str] = {}
    data: dict = {}
    if config_file is not None:
        _merge(data, _load_stage_file(Path(config_file), origins), origins, str(Path(config_file).resolve()))
    has_paths = any(f.name == "paths" for f in fields(schema))
    if has_paths:
        data["paths"] = _load_paths(paths_file(), origins)
    for text in overrides:
        key, raw = _parse_override(text)
        _apply_override(data, key, raw, origins)
    cfg = _build(schema, data, origins)
    if has_paths:
        # Command-line path overrides are relative to where the command runs.
        for f in fields(PathsConfig):
            if origins.get(f"paths.{f.name}") == COMMAND_LINE:
                setattr(cfg.paths, f.name, str(Path(getattr(cfg.paths, f.name)).expanduser().resolve()))
            elif f"paths.{f.name}" not in origins:
                setattr(cfg.paths, f.name, str((PROJECT_ROOT / getattr(cfg.paths, f.name)).resolve()))
    if check_paths and hasattr(cfg, "required_paths"):
        require_paths(cfg, cfg.required_paths(), origins)
    return cfg


def require_paths(cfg: Any, keys: typing.Iterable[str], origins: dict | None = None) -> None:
    """Raise if any ``paths.<key>`` does not exist, naming the key and the file that set it."""
    missing = []
    for key in keys:
        value = getattr(cfg.paths, key)
        if not Path(value).exists():
            where = (origins or {}).get(f"paths.{key}", str(paths_file()))
            missing.append(f"paths.{key} = {value} (from {where})")
    if missing:
        raise ConfigError(
            "dataset root(s) do not exist:\n  " + "\n  ".join(missing) + "\n"
            "Edit configs/paths.yaml to point at the real data, or generate the synthetic world with "
            "`python -m aux_code.synthetic` (see README)."
        )


def resolve_under(root: str | Path, path: str | Path) -> Path:
    """An absolute path as given; a relative one joined to ``root``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(root) / p


def path_under(root: str | Path, relative: str | Path, *, what: str, error: type[Exception] = ConfigError) -> Path:
    """``root / relative``, refused (``error`` naming ``what``) when it is absolute or leaves ``root`` ('..')."""
    base = Path(root).resolve()
    if Path(relative).is_absolute() or not (base / relative).resolve().is_relative_to(base) or (base / relative).resolve() == base:
        raise error(f"{what} = {str(relative)!r} must name a place inside {base} (no absolute path, no '..')")
    return Path(root) / relative


# --------------------------------------------------------------------------- output


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(obj: Any, length: int = 12) -> str:
    """A stable short hash of a config (or any JSON-able data), for caching stage outputs."""
    data = to_dict(obj) if is_dataclass(obj) else obj
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def experiment_hash(cfg: Any) -> str:
    """Hash of what decides a run's numbers: every section but paths and the run plumbing."""
    d = to_dict(cfg)
    d.pop("paths", None)
    d["run"] = {"seed": cfg.run.seed, "deterministic": cfg.run.deterministic}
    return config_hash(d)


def code_version() -> dict:
    """The git commit (and whether the tree was dirty) plus library versions."""
    info: dict[str, Any] = {"python": sys.version.split()[0]}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
            )
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def write_run_config(cfg: Any, run_dir: str | Path) -> None:
    """Write the resolved config and the code version into the run directory."""
    from aux_code.checkpoint import atomic_write_text  # checkpoint imports torch; config stays light

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    atomic_write_text(run_dir / "version.json", json.dumps(code_version(), indent=2))


def describe(schema: type, prefix: str = "") -> list[str]:
    """One line per key: 'key: type = default  # help'."""
    lines = []
    hints = get_type_hints(schema)
    for f in fields(schema):
        tp = hints[f.name]
        if is_dataclass(tp):
            lines.append(f"{prefix}{f.name}:  # {f.metadata.get('help', '')}")
            lines.extend(describe(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"{prefix}{f.name}: {_type_name(tp)} = {default!r}  # {f.metadata.get('help', '')}")
    return lines


def parse_cli(schema: type[T], argv: typing.Sequence[str] | None, *, default_config: str | None, prog: str) -> T:
    """The shared command line of every stage: ``--config FILE key=value ...``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{schema.__doc__ or ''}\nOverrides: key=value with dotted keys (see --help-config).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default=default_config, help=f"stage YAML file (default: {default_config})")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its type and meaning")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    if args.help_config:
        print("\n".join(describe(schema)))
        raise SystemExit(0)
    config_file = args.config
    if config_file is not None and not Path(config_file).is_absolute() and not Path(config_file).exists():
        config_file = str(PROJECT_ROOT / config_file)
    try:
        cfg = load_config(schema, config_file, args.overrides, check_paths=not args.print_config)
    except ConfigError as e:
        parser.exit(2, f"{prog}: config error: {e}\n")
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        raise SystemExit(0)
    return cfg
