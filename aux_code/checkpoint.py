"""Checkpoints as plain data: atomic writes, ``weights_only=True`` loads, strict key checks.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (state dicts, the
config as a dict, epoch/step, ``format_version``). Nothing pickled beyond that, so every
load can use ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Mapping

import torch

FORMAT_VERSION = 1
# atomic_write's temporary files are ".<target name>.<random>.tmp" next to the target.
TEMP_SUFFIX = ".tmp"
# Wrappers that prefix every key: DistributedDataParallel/DataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable or does not fit the model."""


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary file in the same folder, then rename it to ``path``.

    A reader never sees a half-written file, and a crash leaves the previous file intact (a
    kill can leave the temporary ``.<name>.*.tmp``; :func:`remove_stale_temporaries` clears
    them). An OS error on the way (disk full, no permission) is raised as an OSError naming
    ``path``, also when the writer wrapped it in its own error (torch.save reports a full disk
    as ``enforce fail at inline_container.cc``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error_in(e)
        if cause is not None:
            raise _naming(cause, path) from e
        raise
    return path


def _os_error_in(e: BaseException) -> OSError | None:
    """``e`` if it is an OS error, or the one a RuntimeError was raised from (torch.save wraps them), else None."""
    if isinstance(e, OSError):
        return e if e.errno is not None else None
    if not isinstance(e, RuntimeError):
        return None
    inner = e.__cause__ or e.__context__
    for _ in range(8):
        if inner is None:
            return None
        if isinstance(inner, OSError) and inner.errno is not None:
            return inner
        inner = inner.__cause__ or inner.__context__
    return None


def _naming(e: OSError, path: Path) -> OSError:
    """The same OS error (errno picks the subclass: PermissionError, ...) with ``path`` as its file name."""
    return OSError(e.errno, e.strerror or str(e), str(path))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files a killed :func:`atomic_write` left under ``folder``; returns them.

    Call it only where no other process is writing (a run directory, before its run starts)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy a file's bytes to ``dst`` atomically (see :func:`atomic_write`)."""
    with open(src, "rb") as source:
        return atomic_write(dst, lambda f: shutil.copyfileobj(source, f, 1 << 20))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically (see :func:`atomic_write`)."""
    data = text.encode()
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, data: Any, *, default: Callable[[Any], Any] | None = None) -> Path:
    """Write JSON (indent 1, sorted keys, trailing newline) atomically; ``default`` as in json.dumps."""
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=default) + "\n")


def save_checkpoint(obj: Mapping[str, Any], path: str | Path) -> Path:
    """Write a plain-data checkpoint atomically (see :func:`atomic_write`)."""
    data = dict(obj)
    data.setdefault("format_version", FORMAT_VERSION)
    return atomic_write(path, lambda f: torch.save(data, f))


def load_checkpoint(path: str | Path, *, what: str = "checkpoint", config_key: str | None = None) -> dict:
    """Load a plain-data checkpoint on CPU with ``weights_only=True``.

    ``what`` and ``config_key`` only make the error messages precise
    ("anonymizer checkpoint (model.anonymizer.weights) ... does not exist").
    """
    path = Path(path)
    label = f"{what} ({config_key})" if config_key else what
    if not path.is_file():
        raise CheckpointError(f"{label} {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or pickled files
        raise CheckpointError(
            f"{label} {path} could not be loaded with weights_only=True ({type(e).__name__}: {e}). "
            "Only plain-data checkpoints (state dicts) are accepted."
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{label} {path} holds a {type(data).__name__}, expected a dict")
    return data


def checkpoint_epoch(path: str | Path) -> int | None:
    """The ``epoch`` a checkpoint holds, read without loading its tensors (None: missing, unreadable, no epoch)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(data["epoch"]) if isinstance(data, dict) and data.get("epoch") is not None else None
    except Exception:  # missing, truncated or foreign: the caller treats all alike as "not this epoch"
        return None


def strip_prefixes(state_dict: Mapping[str, Any], prefixes: Iterable[str] = WRAPPER_PREFIXES) -> dict:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``) wherever every key carries them."""
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for p in prefixes:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
    return sd


def load_state_dict_strict(
    model: torch.nn.Module,
    state_dict: Mapping[str, Any],
    *,
    source: str,
    expected_layout: str = "this project's own checkpoints",
    ignore_missing: Iterable[str] = (),
) -> None:
    """Load with exact key and shape matching; on any mismatch raise one error listing it all.

    ``ignore_missing`` names key prefixes the model may keep at their initial values (a new
    classifier head on pretrained features, say).
    """
    sd = strip_prefixes(state_dict)
    own = model.state_dict()
    ignore = tuple(ignore_missing)
    missing = [k for k in own if k not in sd and not k.startswith(ignore)]
    unexpected = [k for k in sd if k not in own]
    wrong_shape = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong_shape:

        def show(items: list[str]) -> str:
            head = ", ".join(items[:8])
            return head + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

        parts = [f"{source} does not fit {type(model).__name__} (expected key layout: {expected_layout})."]
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatches: {show(wrong_shape)}")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict({k: v for k, v in sd.items()}, strict=not ignore)


def file_digest(path: str | Path, length: int = 16) -> str:
    """SHA-256 of a file's bytes (short), used to key caches and manifests by checkpoint."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]
