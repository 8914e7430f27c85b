"""Pieces shared by the hyper-cleaning reproductions (IAPTT-GM Table 3, Improved Table 1, BDA Table 2, BVFIM
Fig. 2): the run configuration and the methods as the papers name them."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

#: BDA's aggregation weight in hyper-cleaning: alpha_k = 0.5 * 0.999^k (BVFIM supplement B.2, the only paper
#: of the four that states BDA's hyper-cleaning schedule)
BDA_ALPHA = {"schedule": "geometric", "c": 0.5, "q": 0.999}


#: BDA's upper step s_u relative to the lower step s_l. BDA's conditions are s_l <= 1 / L_f and
#: s_u <= 2 / (L_F + sigma) (Prop. 1); the lower loss weights every sample by sigmoid(x_i) = 0.5 at the start and the
#: upper loss is the unweighted cross-entropy, so L_F is about 2 L_f and s_u = s_l / 2 keeps the upper step as
#: contracting as the lower one. (s_u = s_l made the unrolled Jacobian product blow up: docs in REPRODUCTION.md.)
BDA_UPPER_RATIO = 0.5


def paper_methods(inner_steps: int, truncate: Optional[int] = None, solver_iters: int = 20,
                  n_train: Optional[int] = None, inner_lr: Optional[float] = None
                  ) -> Dict[str, Tuple[str, Dict[str, Any]]]:
    """Table label -> (registered method, method options) for the hyper-cleaning tables.

    LS = implicit differentiation with a conjugate-gradient solve, NS = Neumann series (both with
    ``solver_iters`` iterations, BVFIM B.2's J = 20), T-RHG truncated to ``truncate`` steps (default K / 2,
    BVFIM B.2), BDA with :data:`BDA_ALPHA` and the upper step ``s_u = inner_lr / 2`` (:data:`BDA_UPPER_RATIO`),
    BVFIM with :func:`bvfim_weights` for ``n_train`` samples.
    """
    t = truncate if truncate is not None else max(1, inner_steps // 2)
    return {
        "LS": ("cg", {"cg_steps": solver_iters, "cg_tol": 0.0}),
        "NS": ("neumann", {"neumann_terms": solver_iters}),
        "RHG": ("rhg", {}),
        "T-RHG": ("trhg", {"truncate": min(t, inner_steps)}),
        "BDA": ("bda", {"alpha": dict(BDA_ALPHA)} if inner_lr is None else
                {"alpha": dict(BDA_ALPHA), "upper_lr": BDA_UPPER_RATIO * inner_lr}),
        "IAPTT-GM": ("iaptt", {}),
        "BVFIM": ("bvfim", bvfim_weights(n_train) if n_train else {}),
    }


def bvfim_weights(n_train: int) -> Dict[str, float]:
    """BVFIM B.2's weights converted from loss sums to our mean losses.

    The supplement uses (mu1, theta, tau) = (1, 1, 1) / 1.01^k on *summed* losses. Dividing the lower
    problem by n_train and the barrier problem by n_val (= n_train in our splits) divides each weight by n;
    mu2 = f(x, y) in B.2 becomes a number of the order of the mean lower loss, 1 here. The decay 1.01^t is
    unchanged.
    """
    w = 1.0 / float(n_train)
    return {"mu1": w, "theta": w, "tau": w, "mu2": 1.0}


def config(*, method: str, method_options: Mapping[str, Any], seed: int, dataset: str, model: str,
           sizes: Sequence[int], noise: float, inner_steps: int, inner_lr: float, outer_steps: int,
           outer_lr: float, outer_optimizer: str = "adam", hidden: int = 100, data_root: Optional[str] = None,
           log_every: Optional[int] = None) -> Dict[str, Any]:
    """A ``hyperclean`` task configuration."""
    train, val, test = sizes
    return {"method": method, "method_options": dict(method_options), "seed": seed, "dataset": dataset,
            "model": model, "hidden": hidden, "train_size": train, "val_size": val, "test_size": test,
            "noise": noise, "inner_steps": inner_steps, "inner_lr": inner_lr, "outer_steps": outer_steps,
            "outer_lr": outer_lr, "outer_optimizer": outer_optimizer, "data_root": data_root,
            "log_every": log_every or max(1, outer_steps // 10), "dtype": "float32"}


def describe(settings: Mapping[str, Any]) -> str:
    """One Markdown line listing the settings of a scale."""
    return ", ".join(f"{k} = {v}" for k, v in settings.items())


#: reference points measured by :func:`reference_summaries` (method label -> description)
REFERENCES = {
    "oracle": "x = +20 on the clean training samples and -20 on the corrupted ones (perfect cleaning), same K",
    "oracle-10K": "the same perfect cleaning with 10 x K inner steps",
    "no-cleaning": "x = 0 (every sample weighted 0.5), same K",
}


def reference_summaries(cfg: Mapping[str, Any]) -> Dict[str, Dict[str, float]]:
    """What the follower reaches with perfect cleaning and with none, under the run's own inner loop.

    These bound what any hyper-cleaning method can reach with the configuration's follower and inner budget
    (K steps of size ``inner_lr`` from the same initialization), so a gap to a paper's accuracy can be
    attributed to the budget rather than to a hypergradient.

    Parameters
    ----------
    cfg : mapping
        A :func:`config` result.

    Returns
    -------
    dict
        ``label -> summary`` for the labels of :data:`REFERENCES`.
    """
    import torch

    from bilevel.api import OuterLoop
    from bilevel.app.data import hyperclean_split
    from bilevel.app.tasks import hyperclean as H

    full = H.config_with_defaults(**{k: v for k, v in cfg.items() if k != "method_options"})
    full["method"] = "rhg"
    run = H.build(full)
    split = hyperclean_split(full["dataset"], full["train_size"], full["val_size"], full["test_size"],
                             noise=full["noise"], seed=full["seed"], root=full["data_root"])
    corrupted = torch.as_tensor(split.corrupted)
    dtype = run.x0.dtype
    xs = {"oracle": (torch.where(corrupted, -20.0, 20.0).to(dtype), 1),
          "oracle-10K": (torch.where(corrupted, -20.0, 20.0).to(dtype), 10),
          "no-cleaning": (torch.zeros_like(run.x0), 1)}
    out = {}
    for label, (x, mult) in xs.items():
        loop = OuterLoop(x, run.y0, method="rhg", outer_lr=1.0, inner_steps=full["inner_steps"] * mult,
                         inner_lr=full["inner_lr"])
        out[label] = run.summarize(loop)
    return out
