"""Callbacks of :func:`bilevel.solve` and :class:`bilevel.OuterLoop`: ``callback(t, record)`` after every outer step.

``t`` is the 0-based index of the step just taken and ``record`` its history record (``upper``, ``lower``,
``grad_norm``, ...). A callback returns nothing; to stop early, ``solve`` users break out of their own
:class:`~bilevel.OuterLoop` loop. The helpers here compose them::

    from tqdm import tqdm

    bar = tqdm(total=200)
    out = bilevel.solve(..., outer_steps=200,
                        callback=bilevel.callbacks.chain(bilevel.callbacks.progress(bar),
                                                         bilevel.callbacks.every(50, print_record)))
    bar.close()

The core does not import tqdm: :func:`progress` drives any bar with ``update(n)`` and ``set_postfix(dict)``
(tqdm's methods), so the caller creates it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

from ._validate import check_callable, check_int

__all__ = ["Callback", "chain", "every", "progress", "History", "as_callback"]

#: ``callback(t, record)``
Callback = Callable[[int, Dict[str, Any]], None]


def as_callback(callback: Any) -> Optional[Callback]:
    """``callback`` checked: None, a callable ``(t, record)``, or a list / tuple of them (run in order)."""
    if callback is None:
        return None
    if isinstance(callback, (list, tuple)):
        return chain(*callback)
    return check_callable("callback", callback, "(t, record) -> None")


def chain(*callbacks: Callback) -> Callback:
    """One callback that calls each of ``callbacks`` in order."""
    cbs = [check_callable("callback", c, "(t, record) -> None") for c in callbacks]

    def call(t: int, record: Dict[str, Any]) -> None:
        for c in cbs:
            c(t, record)

    return call


def every(n: int, callback: Callback) -> Callback:
    """``callback`` on every ``n``-th step only (``t + 1`` divisible by ``n``)."""
    n = check_int("n", n, 1)
    cb = check_callable("callback", callback, "(t, record) -> None")

    def call(t: int, record: Dict[str, Any]) -> None:
        if (t + 1) % n == 0:
            cb(t, record)

    return call


def progress(bar: Any, keys: Sequence[str] = ("upper", "grad_norm")) -> Callback:
    """Advance ``bar`` (e.g. ``tqdm.tqdm(total=outer_steps)``) by one per step and show the record's ``keys``."""
    if not callable(getattr(bar, "update", None)) or not callable(getattr(bar, "set_postfix", None)):
        raise ValueError(f"bar must have update(n) and set_postfix(dict) methods (a tqdm bar), got {bar!r}")
    keys = tuple(keys)

    def call(t: int, record: Dict[str, Any]) -> None:
        shown = {k: f"{float(record[k]):.4g}" for k in keys if k in record and record[k] is not None}
        bar.set_postfix(shown, refresh=False)
        bar.update(1)

    return call


class History:
    """A callback that keeps ``(t, record)`` of every step it sees (``every(n, History())`` thins it)."""

    def __init__(self) -> None:
        self.steps: List[int] = []
        self.records: List[Dict[str, Any]] = []

    def __call__(self, t: int, record: Dict[str, Any]) -> None:
        self.steps.append(t)
        self.records.append(dict(record))
