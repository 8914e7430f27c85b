"""Binary logistic regression with one L2 decay ``exp(x_j)`` per feature (the benchmark's ``ijcnn1`` setting) on
Fashion-MNIST T-shirt/top vs Shirt; metric: the value function h(x) = F(y*(x)) (y*(x) solved accurately).

Fashion-MNIST is read from disk as for ``datacleaning``; nothing is downloaded.
"""
from benchopt import BaseDataset


class Dataset(BaseDataset):
    name = "logreg"

    parameters = {"seed": [0]}

    def get_data(self):
        return dict(problem="logreg", seed=self.seed, options={})
