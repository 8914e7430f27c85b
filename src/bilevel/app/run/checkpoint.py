"""Atomic, checksummed checkpoint files of ``bilevel run`` (``DIR/checkpoints/step-000100.pt``), and the lock of a
run directory.

File format: one header line ``BILEVEL-CKPT 2 <sha256 hex of the payload> <payload length>\\n`` followed by the
payload, a :func:`torch.save` of the state dict (:meth:`bilevel.app.run.runner.TaskRunner.state_dict`). A truncated or
altered file fails the length or checksum test and raises :class:`CheckpointError` naming the file.

**Plain data only.** A state holds only tensors, lists, tuples, dicts (str or int keys), ints, floats, bools,
strs and None (:func:`check_plain`; :func:`encode` refuses anything else, e.g. a numpy array, naming where it
is). The RNG states are stored that way by :func:`rng_state` / :func:`set_rng_state`. The payload is read
with ``torch.load(weights_only=True)``, which rebuilds those types and nothing else: a file whose pickle
would call any other function (``os.system``, an object's ``__reduce__``, ...) is refused with a
:class:`CheckpointError` saying it is not plain data, even when its checksum matches (the checksum only
detects damage: anyone who can write the file can write a matching header). Loading a checkpoint never runs
code from it. Format version 1 (bilevel before plain-data checkpoints: pickled numpy RNG states) is refused
as a version mismatch.

Writing is atomic: the bytes go to a temporary file in the same directory, which is flushed and
``os.fsync``-ed, then renamed over the final name with ``os.replace``; the directory is fsync-ed so the
rename itself survives a crash. Only the newest ``keep`` checkpoints are kept (default 2), so a bad newest
file can fall back to the previous one (:func:`load_latest`).

**Run directory lock.** :class:`RunLock` holds an OS file lock (:mod:`filelock`, ``flock`` on Linux) on
``DIR/.lock`` for the whole life of a run, so two runs (or a run and a ``--resume``) never write the same
directory at once; the holder's PID is written to ``DIR/.lock.pid`` (the lock file itself cannot carry it:
every attempt to take the lock truncates it). The OS releases the lock when the holder dies, even by
``kill -9``; a stale ``.lock.pid`` is then simply overwritten by the next holder. A second writer gets a
:class:`RunLockedError` naming the holder's PID.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import pickle
import random
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch

logger = logging.getLogger("bilevel.app.run.checkpoint")

#: sub-directory of a run directory holding the checkpoints
CHECKPOINT_DIR = "checkpoints"

#: default checkpoint interval of a run in outer steps (0 = no checkpoints)
DEFAULT_CHECKPOINT_EVERY = 50

#: checkpoints a run keeps in DIR/checkpoints (the newest ones)
CHECKPOINTS_KEPT = 2
MAGIC = b"BILEVEL-CKPT"
VERSION = 2  # 2: plain data, read with torch.load(weights_only=True); 1 held pickled numpy RNG states
_NAME = re.compile(r"^step-(\d{6,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, not plain data or of an unknown format (the message
    names it)."""


#: the types a checkpoint may hold (containers: list, tuple, dict with str / int keys)
PLAIN_SCALARS = (type(None), bool, int, float, str)


def _plain_problem(value: Any, where: str) -> Optional[str]:
    """None when ``value`` is plain data, else where the first non-plain entry is and what it is."""
    stack = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, PLAIN_SCALARS) or isinstance(item, torch.Tensor):
            continue
        if isinstance(item, (list, tuple)):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item))
            continue
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    return f"{at} has a key {k!r} of type {type(k).__module__}.{type(k).__qualname__}"
                stack.append((v, f"{at}[{k!r}]"))
            continue
        return f"{at} is a {type(item).__module__}.{type(item).__qualname__}"
    return None


def check_plain(state: Any, where: str = "state") -> None:
    """Raise :class:`CheckpointError` unless ``state`` is plain data (see the module docstring).

    Parameters
    ----------
    state : object
    where : str
        Name of ``state`` in the message.

    Raises
    ------
    CheckpointError
        Naming the first entry that is not a tensor, list, tuple, dict, int, float, bool, str or None.
    """
    problem = _plain_problem(state, where)
    if problem is not None:
        raise CheckpointError(f"not plain data: {problem} (a checkpoint holds only tensors, lists, tuples, "
                              "dicts, ints, floats, bools, strs and None)")


def rng_state() -> Dict[str, Any]:
    """The states of ``random``, numpy's global generator and torch's CPU generator, as plain data.

    Returns
    -------
    dict
        ``random``: ``[version, [625 ints], gauss_next]``; ``numpy``: ``{"bit_generator", "key"`` (int64
        tensor), ``"pos", "has_gauss", "cached_gaussian"}``; ``torch``: the uint8 state tensor.
    """
    version, internal, gauss = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state()
    return {"random": [int(version), [int(v) for v in internal], gauss],
            "numpy": {"bit_generator": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state()}


def seed_streams(seed: int) -> None:
    """Seed ``random``, numpy's global generator (with ``seed % 2**32``) and torch's CPU generator with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state` (exactly: the generators continue where they were)."""
    version, internal, gauss = state["random"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    n = state["numpy"]
    key = n["key"].numpy() if isinstance(n["key"], torch.Tensor) else np.asarray(n["key"])
    np.random.set_state((n["bit_generator"], key.astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"])


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint after ``step`` outer steps (``step-000100.pt``)."""
    return f"step-{int(step):06d}.pt"


def check_checkpoint_every(value: Any) -> int:
    """``value`` as a checkpoint interval (an int >= 0; 0 = no checkpoints).

    Raises
    ------
    ValueError
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"bad value {value!r} for checkpoint_every: expected an integer >= 0 "
                         "(0 = no checkpoints)")
    return value


def is_checkpoint_of(path: Optional[Path], state: Mapping[str, Any]) -> bool:
    """True when ``path`` is the checkpoint file of ``state`` (same outer step), i.e. it is saved already."""
    return path is not None and path.name == checkpoint_name(state["t"])


@contextlib.contextmanager
def rng_untouched() -> Iterator[None]:
    """Run the block without consuming the python, numpy or torch (CPU) random streams."""
    states = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


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
        Plain data only (:func:`check_plain`).

    Returns
    -------
    bytes

    Raises
    ------
    CheckpointError
        ``state`` is not plain data (the message names the entry).
    """
    check_plain(dict(state))
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
        Bad header, wrong length (truncated), checksum mismatch (corrupt), or a payload that is not plain data
        (it would run code when unpickled; it is refused without running anything).
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
    try:  # weights_only: rebuilds tensors and plain containers, calls no other function of the pickle
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{where}: not plain data, refused without unpickling it ({_refusal(err)}); a "
                              "bilevel checkpoint holds only tensors and plain containers: this file was not "
                              "written by bilevel or was altered, delete it") from None
    except Exception as err:  # checksum ok but unreadable: written by an incompatible version
        raise CheckpointError(f"{where}: cannot be read: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: holds {type(state).__name__}, expected a dict")
    try:
        check_plain(state)
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {err}") from None
    return state


def _refusal(err: BaseException) -> str:
    """What torch's weights-only unpickler refused (the global the pickle names), in a few words."""
    found = re.search(r"GLOBAL\s+([\w.]+)", str(err))
    if found:
        return f"its pickle calls {found.group(1).rstrip('.')}"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1].rstrip(".") if lines else type(err).__name__


def save(state: Mapping[str, Any], run_dir: Any, step: int, keep: int = 2) -> Path:
    """Write ``state`` atomically as ``run_dir/checkpoints/step-<step>.pt`` and prune older files.

    Parameters
    ----------
    state : mapping
        A :meth:`bilevel.app.run.runner.TaskRunner.state_dict`.
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


# ------------------------------------------------------------------------------------------ run lock
#: the lock file of a run directory, and the file naming its holder (``PID HOST``)
LOCK_FILE, LOCK_OWNER_FILE = ".lock", ".lock.pid"

#: seconds a refused writer waits for the holder's PID file to appear (the holder writes it right after locking)
_OWNER_WAIT = 2.0


class RunLockedError(ValueError):
    """Another process holds the lock of a run directory.

    Attributes
    ----------
    run_dir : Path
    pid : int or None
        The holder's process id (None when it could not be read).
    """

    def __init__(self, message: str, run_dir: Path, pid: Optional[int]):
        super().__init__(message)
        self.run_dir = run_dir
        self.pid = pid


def _file_lock(path: Path) -> Any:
    import filelock

    try:  # no soft (marker file) fallback: a lock that a killed process leaves behind would block resumes
        return filelock.FileLock(str(path), timeout=0, thread_local=False, fallback_to_soft=False)
    except TypeError:  # filelock < 4 has no soft fallback to turn off
        return filelock.FileLock(str(path), timeout=0, thread_local=False)


class RunLock:
    """The exclusive lock of a run directory (see the module docstring).

    Parameters
    ----------
    run_dir : str or Path
        An existing directory.

    Examples
    --------
    >>> lock = RunLock("results/x").acquire()   # doctest: +SKIP
    >>> ...                                      # write the run
    >>> lock.release()                           # doctest: +SKIP
    """

    def __init__(self, run_dir: Any):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.owner_path = self.run_dir / LOCK_OWNER_FILE
        self._lock: Any = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._lock is not None

    def owner(self) -> Optional[int]:
        """The PID written by the current holder (None when there is no readable PID file)."""
        try:
            text = self.owner_path.read_text()
        except OSError:
            return None
        parts = text.split()
        try:
            return int(parts[0]) if parts else None
        except ValueError:
            return None

    def acquire(self) -> "RunLock":
        """Take the lock without waiting and write this process's PID next to it.

        Returns
        -------
        RunLock
            ``self``.

        Raises
        ------
        RunLockedError
            Another process holds it (the message names its PID).
        """
        if self._lock is not None:
            return self
        import filelock

        lock = _file_lock(self.path)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            pid, deadline = self.owner(), time.monotonic() + _OWNER_WAIT
            while pid is None and time.monotonic() < deadline:
                time.sleep(0.05)  # the holder has the lock but has not written its PID yet
                pid = self.owner()
            who = f"process {pid}" if pid is not None else "another process (PID unknown)"
            raise RunLockedError(f"run directory {str(self.run_dir)!r} is in use: {who} holds its lock "
                                 f"{self.path}; wait for that run to end (or stop it: kill {pid if pid else 'PID'}, "
                                 f"then `bilevel run --resume {self.run_dir}`), or choose another --out",
                                 self.run_dir, pid) from None
        except (OSError, NotImplementedError) as err:  # a file system without flock (some network mounts)
            if isinstance(err, OSError) and err.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                raise
            logger.warning("cannot lock %s (%s): concurrent runs in this directory are not detected", self.path,
                           err)
            return self
        self._lock = lock
        try:
            atomic_write_bytes(self.owner_path, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Remove the PID file and release the lock (idempotent)."""
        if self._lock is None:
            return
        lock, self._lock = self._lock, None
        try:
            if self.owner() == os.getpid():
                self.owner_path.unlink()
        except OSError:
            pass
        finally:
            lock.release(force=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ------------------------------------------------------------------------------------------ stale temp files
#: the temporary files of :func:`atomic_write_bytes`: ``.<name>.<random>.tmp``
_TMP_NAME = re.compile(r"^\..+\.[^.]+\.tmp$")


def remove_stale_temp_files(directory: Any) -> List[Path]:
    """Delete the temporary files that :func:`atomic_write_bytes` leaves behind when its process dies mid-write.

    A ``kill -9`` (or a power cut) between the temporary file's creation and the ``os.replace`` leaves
    ``.<name>.<random>.tmp`` in the target's directory. Call this only while holding the directory's
    :class:`RunLock`: a live writer's temporary file would be deleted too.

    Parameters
    ----------
    directory : str or Path
        A run directory or its ``checkpoints`` sub-directory (nothing happens when it does not exist).

    Returns
    -------
    list of Path
        The files removed.
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    removed = []
    for path in sorted(d.iterdir()):
        if _TMP_NAME.match(path.name) and path.is_file():
            try:
                path.unlink()
            except FileNotFoundError:  # pragma: no cover - gone meanwhile
                continue
            removed.append(path)
    return removed


__all__ = ["CHECKPOINT_DIR", "DEFAULT_CHECKPOINT_EVERY", "CHECKPOINTS_KEPT", "CheckpointError", "checkpoint_name",
           "check_checkpoint_every", "is_checkpoint_of", "rng_untouched", "atomic_write_bytes", "encode", "decode",
           "save", "list_checkpoints", "load", "load_latest", "check_plain", "rng_state", "set_rng_state",
           "seed_streams",
           "LOCK_FILE", "LOCK_OWNER_FILE", "RunLock", "RunLockedError", "remove_stale_temp_files"]
