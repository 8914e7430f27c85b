"""Pieces shared by the hyper-cleaning reproductions (IAPTT-GM Table 3, Improved Table 1, BDA Table 2, BVFIM
Fig. 2): the run configuration and the methods as the papers name them."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

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
           log_every: Optional[int] = None, **extra: Any) -> Dict[str, Any]:
    """A ``hyperclean`` task configuration; ``extra`` adds task or runner keys (``warm_start``, ``holdout_size``,
    ``select_metric``, ``patience``, ``activation``, ``init_lr``, ...) only where given, so the configurations
    of the experiments that do not use them stay as they were."""
    train, val, test = sizes
    return {"method": method, "method_options": dict(method_options), "seed": seed, "dataset": dataset,
            "model": model, "hidden": hidden, "train_size": train, "val_size": val, "test_size": test,
            "noise": noise, "inner_steps": inner_steps, "inner_lr": inner_lr, "outer_steps": outer_steps,
            "outer_lr": outer_lr, "outer_optimizer": outer_optimizer, "data_root": data_root,
            "log_every": log_every or max(1, outer_steps // 10), "dtype": "float32", **extra}


def describe(settings: Mapping[str, Any]) -> str:
    """One Markdown line listing the settings of a scale."""
    return ", ".join(f"{k} = {v}" for k, v in settings.items())


#: reference points measured by :func:`reference_summaries` (method label -> description)
REFERENCES = {
    "oracle": "x = +20 on the clean training samples and -20 on the corrupted ones (perfect cleaning), same K",
    "oracle-10K": "the same perfect cleaning with 10 x K inner steps",
    "no-cleaning": "x = 0 (every sample weighted 0.5), same K",
}

#: the reference points of a warm-started configuration (:func:`reference_summaries`)
WARM_REFERENCES = ("oracle", "no-cleaning")


def reference_summaries(cfg: Mapping[str, Any]) -> Dict[str, Dict[str, float]]:
    """What the follower reaches with perfect cleaning and with none, under the run's own inner loop.

    These bound what a hyper-cleaning method whose follower learns from the training split only can reach with
    the configuration's follower and inner budget, so a gap to a paper's accuracy can be attributed to the budget
    rather than to a hypergradient. Cold-started configurations: K steps of size ``inner_lr`` from the same
    initialization (``oracle-10K``: 10 K steps). With ``warm_start``: the follower at the fixed x is trained in
    blocks of K steps, each from the end of the previous one, evaluated every ``log_every`` blocks and stopped
    by the configuration's ``select_metric`` / ``patience`` rule like the method runs (at most ``outer_steps``
    blocks), and summarized at the best evaluation (``selected_step`` etc. in the summary).

    Parameters
    ----------
    cfg : mapping
        A :func:`config` result.

    Returns
    -------
    dict
        ``label -> summary`` for the labels of :data:`REFERENCES` (cold start) or :data:`WARM_REFERENCES`.
    """
    import torch

    from bilevel.api import OuterLoop
    from bilevel.app.data import hyperclean_split
    from bilevel.app.tasks import hyperclean as H

    from bilevel.app.run.selection import Selection

    runner_keys = ("select_metric", "select_mode", "patience", "threads", "init_lr")
    full = H.config_with_defaults(**{k: v for k, v in cfg.items() if k != "method_options" and k not in runner_keys})
    full["method"] = "rhg"
    warm = bool(full.get("warm_start"))
    full["warm_start"] = False
    run = H.build(full)
    split = hyperclean_split(full["dataset"], full["train_size"], full["val_size"], full["test_size"],
                             noise=full["noise"], seed=full["seed"], root=full["data_root"])
    corrupted = torch.as_tensor(split.corrupted)
    dtype = run.x0.dtype
    oracle = torch.where(corrupted, -20.0, 20.0).to(device=run.x0.device, dtype=dtype)  # where the task's data are
    xs = {"oracle": (oracle, 1), "oracle-10K": (oracle, 10), "no-cleaning": (torch.zeros_like(run.x0), 1)}

    def loop_from(x: torch.Tensor, start: Any, mult: int = 1) -> OuterLoop:
        return OuterLoop(x, start, method="rhg", outer_lr=1.0, inner_steps=full["inner_steps"] * mult,
                         inner_lr=full["inner_lr"])

    out = {}
    if not warm:
        for label, (x, mult) in xs.items():
            out[label] = run.summarize(loop_from(x, run.y0, mult))
        return out
    # warm start: block t starts from the end of block t - 1 (K inner steps each, x fixed), evaluated and stopped
    # like the method runs; the summary is taken from the start of the best block
    upper, lower = run.objectives(0)
    for label in WARM_REFERENCES:
        x = xs[label][0]
        sel = Selection(cfg.get("select_metric"), cfg.get("select_mode", "min"), cfg.get("patience"))
        start, t, cap = run.y0, 0, int(full["outer_steps"])
        while True:
            if t % int(full["log_every"]) == 0 or t == cap:
                sel.update(t, run.evaluate(loop_from(x, start)), lambda start=start: {"start": start})
            if sel.stopped or t == cap:
                break
            start, t = loop_from(x, start).evaluate(upper, lower)[1], t + 1
        best = sel.best_state["start"] if sel.best_state is not None else start
        out[label] = dict(run.summarize(loop_from(x, best)), **sel.summary(t))
    return out


def _references(cfg: Mapping[str, Any], path: str) -> Dict[str, Dict[str, float]]:
    """:func:`reference_summaries` of ``cfg``, read back from ``path`` when it holds them (same configuration)."""
    import json
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    p = Path(path)
    if p.exists():
        saved = json.loads(p.read_text())

        def setting(c: Mapping[str, Any]) -> Dict[str, Any]:  # the device does not tell reference points apart
            return {k: v for k, v in dict(c).items() if k != "device"}

        if setting(saved.get("config") or {}) == setting(json.loads(json.dumps(dict(cfg)))):
            return saved["summaries"]
    out = reference_summaries(cfg)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps({"config": dict(cfg), "summaries": out}))
    tmp.replace(p)
    return out


def reference_grid(ctx: Any, experiment: str, configs: Sequence[Mapping[str, Any]]) -> List[Dict[str, Dict[str, float]]]:
    """:func:`reference_summaries` of each configuration, in ``ctx.workers`` processes, kept under
    ``<runs>/<experiment>/references/`` so that a rerun reads them back (whatever device they were measured on);
    computed on ``ctx.device`` (unless a configuration sets its own ``device``)."""
    import concurrent.futures as cf
    import multiprocessing

    configs = [{"device": getattr(ctx, "device", "auto"), **c} for c in configs]
    paths = [str(ctx.runs_dir / experiment / "references" / f"seed{c['seed']}-{i}.json") for i, c in enumerate(configs)]
    if ctx.workers == 1 or len(configs) == 1:
        return [_references(c, p) for c, p in zip(configs, paths)]
    with cf.ProcessPoolExecutor(max_workers=ctx.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_references, configs, paths))
