"""Atomic, checksummed checkpoint files of ``bilevel run`` (``DIR/checkpoints/step-000100.pt``).

File format: one header line ``BILEVEL-CKPT 1 <sha256 hex of the payload> <payload length>\\n`` followed by the
payload, a :func:`torch.save` of the state dict (:meth:`bilevel.runner.TaskRunner.state_dict`). A truncated or
altered file fails the length or checksum test and raises :class:`CheckpointError` naming the file.

Writing is atomic: the bytes go to a temporary file in the same directory, which is flushed and
``os.fsync``-ed, then renamed over the final name with ``os.replace``; the directory is fsync-ed so the
rename itself survives a crash. Only the newest ``keep`` checkpoints are kept (default 2), so a bad newest
file can fall back to the previous one (:func:`load_latest`).

The payload is unpickled with ``weights_only=False`` (it holds the numpy / ``random`` RNG states) only after
its checksum matched: load checkpoints you wrote yourself.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

#: sub-directory of a run directory holding the checkpoints
CHECKPOINT_DIR = "checkpoints"
MAGIC = b"BILEVEL-CKPT"
VERSION = 1
_NAME = re.compile(r"^step-(\d{6,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or of an unknown format (the message names it)."""


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint after ``step`` outer steps (``step-000100.pt``)."""
    return f"step-{int(step):06d}.pt"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, ``os.replace``, fsync dir).

    Parameters
    ----------
    path : Path
    data : bytes
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def encode(state: Mapping[str, Any]) -> bytes:
    """Serialize a state dict into the checkpoint format (header line + payload).

    Parameters
    ----------
    state : mapping

    Returns
    -------
    bytes
    """
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    payload = buf.getvalue()
    header = b"%s %d %s %d\n" % (MAGIC, VERSION, hashlib.sha256(payload).hexdigest().encode(), len(payload))
    return header + payload


def decode(data: bytes, where: str = "checkpoint") -> Dict[str, Any]:
    """Check and deserialize the bytes of a checkpoint file.

    Parameters
    ----------
    data : bytes
    where : str
        The file name, for messages.

    Returns
    -------
    dict

    Raises
    ------
    CheckpointError
        Bad header, wrong length (truncated) or checksum mismatch (corrupt).
    """
    end = data.find(b"\n", 0, 200)
    parts = data[:end].split(b" ") if end > 0 else []
    if len(parts) != 4 or parts[0] != MAGIC:
        raise CheckpointError(f"{where}: not a bilevel checkpoint (bad or missing header)")
    try:
        version, digest, length = int(parts[1]), parts[2].decode("ascii"), int(parts[3])
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{where}: not a bilevel checkpoint (unreadable header)") from None
    if version != VERSION:
        raise CheckpointError(f"{where}: checkpoint format version {version}, this bilevel reads {VERSION}")
    payload = data[end + 1:]
    if len(payload) != length:
        raise CheckpointError(f"{where}: truncated or padded: payload has {len(payload)} bytes, the header "
                              f"says {length}")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{where}: corrupt: sha256 checksum mismatch")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as err:  # checksum ok but unreadable: written by an incompatible version
        raise CheckpointError(f"{where}: cannot be read: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: holds {type(state).__name__}, expected a dict")
    return state


def save(state: Mapping[str, Any], run_dir: Any, step: int, keep: int = 2) -> Path:
    """Write ``state`` atomically as ``run_dir/checkpoints/step-<step>.pt`` and prune older files.

    Parameters
    ----------
    state : mapping
        A :meth:`bilevel.runner.TaskRunner.state_dict`.
    run_dir : str or Path
        The run directory.
    step : int
        Outer steps done (names the file).
    keep : int
        Number of newest checkpoints to keep (>= 1).

    Returns
    -------
    Path
        The file written.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.exists():
        directory.mkdir(parents=True, exist_ok=True)
        _fsync_dir(directory.parent)
    path = directory / checkpoint_name(step)
    atomic_write_bytes(path, encode(state))
    for old in list_checkpoints(run_dir)[:-keep]:
        try:
            old.unlink()
        except OSError:
            pass
    return path


def list_checkpoints(run_dir: Any) -> List[Path]:
    """The checkpoint files of a run directory, oldest first (by step)."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load(path: Any) -> Dict[str, Any]:
    """Read and verify one checkpoint file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict

    Raises
    ------
    CheckpointError
        Unreadable, truncated or corrupt (the message names the file).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from err
    return decode(data, str(path))


def load_latest(run_dir: Any, accept: Optional[Callable[[Dict[str, Any]], Optional[str]]] = None,
                report: Optional[Callable[[str], None]] = None) -> Tuple[Optional[Dict[str, Any]], Optional[Path]]:
    """The newest checkpoint that verifies (and that ``accept`` takes), falling back to older ones.

    Parameters
    ----------
    run_dir : str or Path
    accept : callable, optional
        ``accept(state) -> None`` to take the state, or a reason string to skip it.
    report : callable, optional
        ``report(message)`` for every skipped file (its name and why).

    Returns
    -------
    (dict or None, Path or None)
        The state and its file; ``(None, None)`` when no checkpoint is usable.
    """
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load(path)
        except CheckpointError as err:
            if report is not None:
                report(f"skipping bad checkpoint {err}; falling back to the previous one")
            continue
        reason = accept(state) if accept is not None else None
        if reason is not None:
            if report is not None:
                report(f"skipping checkpoint {path}: {reason}; falling back to the previous one")
            continue
        return state, path
    return None, None


__all__ = ["CHECKPOINT_DIR", "CheckpointError", "checkpoint_name", "atomic_write_bytes", "encode", "decode",
           "save", "list_checkpoints", "load", "load_latest"]
