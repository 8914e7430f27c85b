"""Where a run's tensors live: the ``device`` option of ``bilevel run`` / ``reproduce`` / ``bench``.

Values (``--device`` on the command line, ``device:`` in a YAML configuration):

* ``auto`` (the default) -- ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``;
* ``cpu``;
* ``cuda`` -- the current CUDA device (``cuda:0`` unless ``torch.cuda.set_device`` chose another);
* ``cuda:N`` -- GPU number N.

:func:`check_device` checks the spelling only (it runs while a configuration is read, also on a machine without a
GPU, e.g. to compare runs); :func:`resolve_device` turns a value into the :class:`torch.device` the run uses and
refuses ``cuda`` / ``cuda:N`` where CUDA is not available -- an explicit ``cuda`` never falls back to the CPU
silently. The dtype is unaffected: a run stays in its ``dtype`` (float32 by default) on every device.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

#: the values of ``--device`` / ``device:``, as the messages name them
DEVICE_VALUES = ("auto", "cpu", "cuda", "cuda:N")
#: the default of ``bilevel run``, ``bilevel reproduce`` and ``bilevel bench``
DEFAULT_DEVICE = "auto"

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")
_ALLOWED = "auto, cpu, cuda or cuda:N (N the index of a GPU)"


def check_device(value: Any) -> str:
    """``value`` as a device setting (lower case, spaces stripped), without looking at the hardware.

    Parameters
    ----------
    value : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        Anything else (naming what is allowed).
    """
    if not isinstance(value, str):
        raise ValueError(f"bad value {value!r} for option 'device': expected {_ALLOWED}")
    text = value.strip().lower()
    if text in ("auto", "cpu", "cuda") or _CUDA_INDEX.match(text):
        return text
    raise ValueError(f"bad value {value!r} for option 'device': expected {_ALLOWED}")


def resolve_device(value: Any = DEFAULT_DEVICE) -> Any:
    """The :class:`torch.device` of a device setting on this machine.

    Parameters
    ----------
    value : str or torch.device
        A :func:`check_device` value (``auto``: ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``), or a
        ``torch.device`` of type cpu or cuda.

    Returns
    -------
    torch.device
        ``cpu`` or ``cuda:N`` (always with its index, so that records name the GPU).

    Raises
    ------
    ValueError
        A bad value; ``cuda`` / ``cuda:N`` while CUDA is not available (no silent fallback to the CPU); a GPU
        index beyond ``torch.cuda.device_count()``.
    """
    import torch

    if isinstance(value, torch.device):
        if value.type not in ("cpu", "cuda"):
            raise ValueError(f"bad device {str(value)!r}: expected {_ALLOWED}")
        value = str(value)
    text = check_device(value)
    if text == "cpu" or (text == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {text!r} was asked for, but CUDA is not available here "
                         "(torch.cuda.is_available() is False: no GPU, no driver, or a CPU-only build of torch); use "
                         "device cpu, or auto (cuda when available, else cpu)")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if text in ("auto", "cuda") else int(text.split(":")[1])
    if index >= count:
        raise ValueError(f"device {text!r} was asked for, but this machine has {count} GPU(s) (cuda:0 .. "
                         f"cuda:{count - 1})")
    return torch.device("cuda", index)


def device_name(device: Any) -> str:
    """``"cpu"`` or ``"cuda:N"``: what run records (summary.json, bench.json) say about where a run ran."""
    return str(device)


def synchronizer(device: Any) -> Optional[Callable[[], None]]:
    """A callable waiting for the queued work of a CUDA device (``torch.cuda.synchronize``), None for the CPU.

    Timers read the clock only after it: CUDA kernels run asynchronously, so without it a timing measures the
    launches, not the work.
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None

    def sync() -> None:
        torch.cuda.synchronize(device)

    return sync


__all__ = ["DEVICE_VALUES", "DEFAULT_DEVICE", "check_device", "resolve_device", "device_name", "synchronizer"]
