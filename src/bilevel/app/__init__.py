"""The app layer: everything a run needs around the core (``bilevel`` on torch only).

``cli`` (the ``bilevel`` command), ``config`` (run configurations), ``demo``, ``run/`` (the runner and its parts:
run directory, metrics, checkpoints, guards, plots, comparisons), ``tasks/`` (hyper-cleaning, few-shot, toy),
``data/`` (datasets and splits), ``launch`` (multi-process runs over :mod:`bilevel.parallel`), ``reproduce/`` (the
papers' experiments) and ``experiments/`` (the synthetic figures). The core never imports this package.
"""
