"""bilevel.callbacks: solve and OuterLoop call them once per step with the step's record; the helpers compose."""
import pytest
import torch

import bilevel
from bilevel import callbacks

D = torch.float64


def upper(x, y):
    return ((y - 1.0) ** 2).sum()


def lower(x, y):
    return 0.5 * ((y - x) ** 2).sum()


KW = dict(method="rhg", outer_steps=7, outer_lr=0.1, inner_steps=5, inner_lr=0.5)


class FakeBar:
    def __init__(self):
        self.n, self.postfix = 0, None

    def update(self, n):
        self.n += n

    def set_postfix(self, d, refresh=True):
        self.postfix = d


def test_solve_calls_each_callback_once_per_step_with_its_history_record():
    hist, bar, thin = callbacks.History(), FakeBar(), callbacks.History()
    out = bilevel.solve(upper, lower, torch.zeros(3, dtype=D), torch.zeros(3, dtype=D),
                        callback=[hist, callbacks.progress(bar), callbacks.every(3, thin)], **KW)
    assert hist.steps == list(range(7)) and hist.records == out.history
    assert bar.n == 7 and set(bar.postfix) == {"upper", "grad_norm"}
    assert float(bar.postfix["upper"]) == pytest.approx(out.history[-1]["upper"], rel=1e-3)
    assert thin.steps == [2, 5]


def test_outer_loop_callback_sees_what_step_returns():
    seen = []
    loop = bilevel.OuterLoop(torch.zeros(3, dtype=D), torch.zeros(3, dtype=D), method="rhg", outer_lr=0.1,
                             inner_steps=5, inner_lr=0.5, callback=lambda t, r: seen.append((t, r)))
    records = [loop.step(upper, lower) for _ in range(4)]
    assert [t for t, _ in seen] == [0, 1, 2, 3] and [r for _, r in seen] == records


@pytest.mark.parametrize("bad, match", [(3, "callback must be"), ([print, 3], "callback must be")])
def test_bad_callbacks_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        bilevel.solve(upper, lower, torch.zeros(3, dtype=D), torch.zeros(3, dtype=D), callback=bad, **KW)


def test_progress_needs_a_bar_and_every_a_positive_n():
    with pytest.raises(ValueError, match="update"):
        callbacks.progress(object())
    with pytest.raises(ValueError, match="n must be"):
        callbacks.every(0, print)
