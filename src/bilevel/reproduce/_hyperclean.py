"""Pieces shared by the hyper-cleaning reproductions (IAPTT-GM Table 3, Improved Table 1, BDA Table 2, BVFIM
Fig. 2): the run configuration and the methods as the papers name them."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

#: BDA's aggregation weight in hyper-cleaning: alpha_k = 0.5 * 0.999^k (BVFIM supplement B.2, the only paper
#: of the four that states BDA's hyper-cleaning schedule)
BDA_ALPHA = {"schedule": "geometric", "c": 0.5, "q": 0.999}


def paper_methods(inner_steps: int, truncate: Optional[int] = None, solver_iters: int = 20) -> Dict[str, Tuple[str, Dict[str, Any]]]:
    """Table label -> (registered method, method options) for the hyper-cleaning tables.

    LS = implicit differentiation with a conjugate-gradient solve, NS = Neumann series (both with
    ``solver_iters`` iterations, BVFIM B.2's J = 20), T-RHG truncated to ``truncate`` steps (default K / 2,
    BVFIM B.2), BDA with :data:`BDA_ALPHA`.
    """
    t = truncate if truncate is not None else max(1, inner_steps // 2)
    return {
        "LS": ("cg", {"cg_steps": solver_iters, "cg_tol": 0.0}),
        "NS": ("neumann", {"neumann_terms": solver_iters}),
        "RHG": ("rhg", {}),
        "T-RHG": ("trhg", {"truncate": min(t, inner_steps)}),
        "BDA": ("bda", {"alpha": dict(BDA_ALPHA)}),
        "IAPTT-GM": ("iaptt", {}),
        "BVFIM": ("bvfim", {}),
    }


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
