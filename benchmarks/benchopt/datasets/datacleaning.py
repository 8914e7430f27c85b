"""Hyper-data-cleaning (the benchmark's ``mnist[ratio]``) on Fashion-MNIST: a 784 x 10 softmax model trained on
20000 samples whose labels are corrupted with probability ``ratio``, one weight per sample; metric: test error.

Fashion-MNIST is read from disk (``$BILEVEL_DATA``, ``~/.cache/bilevel`` or ``/usr/share/datasets/fashion-mnist``;
``make data`` at the repository root installs it); nothing is downloaded.
"""
from benchopt import BaseDataset


class Dataset(BaseDataset):
    name = "datacleaning"

    parameters = {"ratio": [0.5, 0.7, 0.9], "seed": [0]}

    def get_data(self):
        return dict(problem=f"datacleaning{self.ratio}", seed=self.seed, options={})
