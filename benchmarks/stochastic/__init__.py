"""benchopt ``benchmark_bilevel``'s problems for the stochastic solvers of :mod:`bilevel.stochastic`.

* :mod:`.problems` -- ``quadratic``, ``datacleaning{0.5,0.7,0.9}`` (Fashion-MNIST) and ``logreg``, with their metrics
  and the benchmark's tuned parameters;
* :mod:`.run` -- ``python -m bilevel_benchmarks.stochastic.run``: every (method, seed) under a wall-time budget, one
  JSON per run;
* :mod:`.plot` -- ``python -m bilevel_benchmarks.stochastic.plot``: the curves and ``RESULTS.md``.
"""
