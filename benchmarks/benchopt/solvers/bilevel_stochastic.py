"""The 14 stochastic solvers of :mod:`bilevel.stochastic` as one parametrized benchopt solver.

``-s "bilevel-stochastic[method=soba]"`` runs SOBA with the problem's tuned parameters (``params[method]`` of the
objective: benchmark_bilevel's best ``step_size`` / ``outer_ratio`` and options); ``step_size`` and ``outer_ratio``,
when given, override them with the benchmark's convention ``inner_lr = step_size``, ``outer_lr = step_size /
outer_ratio`` (a ratio not given keeps the tuned one). One callback = ``eval_freq`` outer iterations, as in
benchmark_bilevel's ``StochasticJaxSolver``; the state (iterates, samplers, generators) is built at the start of
each ``run`` (timed, as there), from the seed ``random_state`` or, when it is None, benchopt's seed for the
repetition.
"""
from benchopt import BaseSolver, safe_import_context
from benchopt.stopping_criterion import SufficientProgressCriterion

with safe_import_context() as import_ctx:
    from bilevel.stochastic import StochasticLoop


class Solver(BaseSolver):
    name = "bilevel-stochastic"

    parameters = {
        "method": ["stocbio", "amigo", "soba", "saba", "srba", "ttsa", "fsla", "mrbo", "vrbo", "bsa", "sustain",
                   "pzobo", "f2sa", "bome"],
        "eval_freq": [32],
        "batch_size": [64],
        "step_size": [None],
        "outer_ratio": [None],
        "random_state": [None],
    }

    sampling_strategy = "callback"
    # stochastic curves are noisy: let --max-runs / --timeout end the runs, not a few evaluations without a new best
    stopping_criterion = SufficientProgressCriterion(patience=100, strategy="callback")

    def set_objective(self, upper, lower, n_upper, n_lower, x0, y0, params, batch_size=64, problem=None):
        self.upper, self.lower, self.n_upper, self.n_lower = upper, lower, n_upper, n_lower
        self.x0, self.y0 = x0, y0
        tuned = dict(params[self.method])
        inner_lr, outer_lr = tuned.pop("inner_lr"), tuned.pop("outer_lr")
        ratio = inner_lr / outer_lr if self.outer_ratio is None else float(self.outer_ratio)
        if self.step_size is not None:
            inner_lr = float(self.step_size)
        self.inner_lr, self.outer_lr, self.options = inner_lr, inner_lr / ratio, tuned
        if self.random_state is not None:
            self.seed = int(self.random_state)
        else:
            try:
                self.seed = int(self.get_seed(use_repetition=True))
            except (AttributeError, ValueError):  # no benchopt run context (e.g. a bare unit test)
                self.seed = 0
        self._loop = None

    def _new_loop(self):
        return StochasticLoop(self.upper, self.lower, self.x0, self.y0, method=self.method, n_upper=self.n_upper,
                              n_lower=self.n_lower, batch_size=min(self.batch_size, max(self.n_upper, self.n_lower)),
                              seed=self.seed, inner_lr=self.inner_lr, outer_lr=self.outer_lr, **self.options)

    def warm_up(self):
        # once per solver, untimed (as benchmark_bilevel's jit warm-up): torch's first-call costs
        loop = self._new_loop()
        for _ in range(2):
            loop.step()

    def run(self, callback):
        self._loop = self._new_loop()
        while callback():
            for _ in range(self.eval_freq):
                self._loop.step()

    def get_result(self):
        if self._loop is None:
            return dict(x=self.x0, y=self.y0)
        return dict(x=self._loop.state["x"].clone(), y=self._loop.state["y"].clone())
