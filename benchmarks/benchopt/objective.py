"""benchopt objective: the torch ports of benchmark_bilevel's problems (bilevel_benchmarks.stochastic.problems).

A dataset hands over only a problem name and the builder's keyword arguments (plain, picklable values); the
problem itself -- closures over tensors -- is built here, once per (name, seed, options), and kept in a module-level
cache, so that benchopt can hash and pickle the objective without touching the tensors.
"""
from benchopt import BaseObjective, safe_import_context

with safe_import_context() as import_ctx:
    import math

    import torch

    from bilevel_benchmarks.stochastic import problems

#: (name, seed, sorted options) -> BenchProblem; one build per process
_CACHE = {}


def build_problem(problem, seed=0, options=None):
    """The cached :class:`~bilevel_benchmarks.stochastic.problems.BenchProblem` ``problem`` (``make``'s name)."""
    options = dict(options or {})
    key = (problem, int(seed), tuple(sorted(options.items())))
    if key not in _CACHE:
        _CACHE[key] = problems.make(problem, seed=int(seed), **options)
    return _CACHE[key]


class Objective(BaseObjective):
    name = "Bilevel optimization (bilevel, torch)"
    # No url: benchopt would name the benchmark after its last path part ("benchmark_bilevel" for the benchmark this
    # ports, https://github.com/benchopt/benchmark_bilevel), mixing the two in a shared benchopt cache / config.
    # Without one the name is this folder's ("benchopt").
    url = None

    # nothing for `benchopt install` to fetch: setup.sh installs torch (CPU build, pinned) and this repository
    requirements = []
    min_benchopt_version = "1.10.0"  # the version it was written and run with
    sampling_strategy = "callback"

    parameters = {}

    def set_data(self, problem, seed=0, options=None):
        self._key = (problem, int(seed), dict(options or {}))
        build_problem(*self._key)  # build now, outside the timed runs

    @property
    def problem(self):
        return build_problem(*self._key)

    def get_objective(self):
        pb = self.problem
        return dict(upper=pb.upper, lower=pb.lower, n_upper=pb.n_upper, n_lower=pb.n_lower, x0=pb.x0, y0=pb.y0,
                    params=pb.params, batch_size=pb.batch_size, problem=pb.name)

    def evaluate_result(self, x, y):
        # A diverged run: "value" nan, which benchopt's stopping criterion reports as status 'diverged'. Raising
        # (as benchmark_bilevel does) ends the run with status 'error' and a traceback in benchopt 1.10; either way
        # benchopt 1.10 drops that run's curve.
        if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
            return dict(value=math.nan)
        pb = self.problem
        metrics = {k: float(v) for k, v in pb.metrics(x, y).items()}
        return dict(value=metrics[pb.main_metric], **metrics)

    def get_one_result(self):
        pb = self.problem
        return dict(x=pb.x0.clone(), y=pb.y0.clone())
