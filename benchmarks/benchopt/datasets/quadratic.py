"""The benchmark's ``simulated`` quadratic (per-sample rank-one quadratics; metric: ||grad h(x)||^2).

The defaults are the full problem (1024 + 1024 samples, dim x = dim y = 100); smaller sizes make quick runs, e.g.
``-d "quadratic[n_samples=256,dim=10]"``.
"""
from benchopt import BaseDataset


class Dataset(BaseDataset):
    name = "quadratic"

    parameters = {"n_samples": [1024], "dim": [100], "seed": [0]}

    def get_data(self):
        options = {"n_inner": self.n_samples, "n_outer": self.n_samples, "dim_inner": self.dim,
                   "dim_outer": self.dim}
        return dict(problem="quadratic", seed=self.seed, options=options)
