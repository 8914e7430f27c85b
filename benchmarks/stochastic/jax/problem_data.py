"""Data of the two timing problems, as numpy float32 arrays (numpy only: imported by both their_step.py, in the
JAX venv, and our_step.py, in the main venv, so the two sides get the same arrays from the same seed).

* ``quadratic``: benchmark_bilevel's ``simulated`` dataset at its defaults (1024 inner / 1024 outer samples,
  dim_inner = dim_outer = 100, mu = 0.1, L = 1, L_cross = 0.1). Each sample i of each function is
  ``q_i(y, x) = 1/2 y'A_i y + 1/2 x'B_i x + x'C_i y + a_i'y + b_i'x`` with A_i, B_i, C_i rank one and stored
  dense, per sample, as the benchmark stores them (A: (n, dy, dy), B: (n, dx, dx), C: (n, dx, dy)). The
  matrices follow the structure of the benchmark's generator as described in notes/stochastic_solvers.md 3.2
  (expected Hessians with a geometric spectrum, one zero eigenvalue in x), written here independently; they are
  not the benchmark's exact draws, and the acceptance test on the value function is skipped (the time per step
  does not depend on it).
* ``quadratic_factored``: the same functions with the rank-one matrices kept as factors (not the benchmark's
  formulation; it is the one of benchmarks/stochastic/problems.py): a batch costs O(batch d), not O(batch d^2).
* ``quadratic_stacked``: the same factors stored as one table, the columns ``[u | w | p | q | a | b]`` side by side
  (n x 600): a batch is one slice (or one gather) of 64 rows instead of six, cut into its six column blocks.
* ``quadratic_mean``: the dense ``quadratic`` (the same arrays) with its batch mean taken over the matrices first,
  ``1/2 y'(mean A_i)y + 1/2 x'(mean B_i)x + x'(mean C_i)y + (mean a_i)'y + (mean b_i)'x`` (:func:`dense_mean`),
  each mean one matrix-vector product of the batch's weights with its rows: the same function, with one pass over
  each of the batch's matrices. XLA's optimizer makes this rewrite of the per-sample ``quadratic`` itself (its
  optimized program reduces each sliced matrix over the batch with one dot); eager torch evaluates a formula as
  written.
* ``datacleaning``: the shapes of benchmark_bilevel's ``mnist`` dataset (Fashion-MNIST-sized): 20000 training
  (inner) and 5000 validation (outer) samples of 784 features, 10 classes. The features are RANDOM N(0, 1)
  (the benchmark standardises its features) and the labels are random classes: the time per step of these
  solvers does not depend on the values, so no data set is downloaded.
"""
from __future__ import annotations

import numpy as np

QUADRATIC = dict(n_inner=1024, n_outer=1024, dim_inner=100, dim_outer=100, mu=0.1, L=1.0, L_cross=0.1)
DATACLEANING = dict(n_inner=20000, n_outer=5000, n_features=784, n_classes=10, reg=0.2)
PROBLEMS = ("quadratic", "quadratic_mean", "quadratic_factored", "quadratic_stacked", "datacleaning",
            "datacleaning64")
#: the column blocks of a ``quadratic_stacked`` table, in order
STACKED = ("u", "w", "p", "q", "a", "b")
BATCH = 64  # their default batch size


def datacleaning_sizes(problem: str = "datacleaning") -> dict:
    """:data:`DATACLEANING`; for ``datacleaning64`` the sample counts cut down to multiples of :data:`BATCH`
    (19968 / 4992): batches of one size, which the compiled engine needs (its blocks stack the batches)."""
    p = dict(DATACLEANING)
    if problem == "datacleaning64":
        p["n_inner"] -= p["n_inner"] % BATCH
        p["n_outer"] -= p["n_outer"] % BATCH
    return p


def _psd_factor(rng, d, mu, L, zero_eig=False):
    """R with R'R having eigenvalues geometric in [mu, L] (and a leading 0 with ``zero_eig``)."""
    u, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ev = np.geomspace(mu, L, d - 1 if zero_eig else d)
    if zero_eig:
        ev = np.concatenate([[0.0], ev])
    return (u * np.sqrt(ev)) @ u.T


def _quadratic_function(rng, n, dy, dx, mu, L, L_cross):
    ry = rng.standard_normal((n, dy)) @ _psd_factor(rng, dy, mu, L)           # A_i = ry_i ry_i'
    rx = rng.standard_normal((n, dx)) @ _psd_factor(rng, dx, mu, L, True)     # B_i = rx_i rx_i'
    u, _, vh = np.linalg.svd(rng.standard_normal((dx, dy)))
    k = min(dx, dy)
    s = np.geomspace(mu, L_cross, k) if mu != L_cross else np.full(k, L_cross)
    z = rng.standard_normal((n, dy))
    left = (z[:, :k] * s) @ u[:, :k].T                                          # (U D z_i)'
    right = z @ vh.T                                                            # (Vh z_i)'
    return dict(u=ry, w=rx, p=left, q=right, a=rng.standard_normal((n, dy)), b=rng.standard_normal((n, dx)))


def quadratic(seed: int = 2442, dense: bool = True):
    """``{"inner": {...}, "outer": {...}}``, float32: with ``dense`` the per-sample matrices ``A, B, C`` (as the
    benchmark stores them) and ``a, b``; otherwise their rank-one factors ``A_i = u_i u_i'``, ``B_i = w_i w_i'``,
    ``C_i = p_i q_i'`` and ``a, b`` (the ``quadratic_factored`` problem, as benchmarks/stochastic/problems.py keeps
    them: O(batch d) per batch instead of O(batch d^2)). Same draws either way."""
    p = QUADRATIC
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("inner", p["n_inner"]), ("outer", p["n_outer"])):
        f = _quadratic_function(rng, n, p["dim_inner"], p["dim_outer"], p["mu"], p["L"], p["L_cross"])
        if dense:
            f = dict(A=np.einsum("ni,nj->nij", f["u"], f["u"]), B=np.einsum("ni,nj->nij", f["w"], f["w"]),
                     C=np.einsum("ni,nj->nij", f["p"], f["q"]), a=f["a"], b=f["b"])
        out[name] = {k: v.astype(np.float32) for k, v in f.items()}
    return out


def quadratic_stacked(seed: int = 2442) -> dict:
    """``{"inner": table, "outer": table}``: the factors of :func:`quadratic` (``dense=False``), float32, as one
    contiguous (n, 6 d) table whose column blocks are :data:`STACKED` (all blocks have d = 100 columns)."""
    return {name: np.ascontiguousarray(np.concatenate([f[k] for k in STACKED], axis=1))
            for name, f in quadratic(seed, dense=False).items()}


def factored_mean(u, w, p, q, a, b, x, y):
    """The mean over a batch of ``1/2 (u'y)^2 + 1/2 (w'x)^2 + (p'x)(q'y) + a'y + b'x``: the quadratic with
    ``A_i = u_i u_i'``, ``B_i = w_i w_i'``, ``C_i = p_i q_i'``, each argument before x the batch's rows of one factor.
    Operators only, so one formula serves torch tensors (our_step.py) and JAX arrays (their_step.py)."""
    return (0.5 * (u @ y) ** 2 + 0.5 * (w @ x) ** 2 + (p @ x) * (q @ y) + a @ y + b @ x).mean()


def dense_mean(A, B, C, a, b, x, y, w):
    """The mean over a batch of ``1/2 y'A_i y + 1/2 x'B_i x + x'C_i y + a_i'y + b_i'x``, the batch's rows of each
    array first averaged (``A, B, C``: (batch, d, d)) as one matrix-vector product with ``w``, the batch's weights
    (``1 / batch`` each). Operators and ``reshape`` only: one formula for torch tensors (our_step.py) and JAX arrays
    (their_step.py)."""
    def avg(t):  # (batch, *shape) -> shape, one pass over t
        return (w @ t.reshape(t.shape[0], -1)).reshape(t.shape[1:])

    return (0.5 * (y @ (avg(A) @ y)) + 0.5 * (x @ (avg(B) @ x)) + x @ (avg(C) @ y) + avg(a) @ y + avg(b) @ x)


def datacleaning(seed: int = 32, problem: str = "datacleaning"):
    """``{"X_train", "y_train" (int), "X_val", "y_val"}``: random features and labels of the mnist shapes (of
    :func:`datacleaning_sizes`)."""
    p = datacleaning_sizes(problem)
    rng = np.random.default_rng(seed)
    return {"X_train": rng.standard_normal((p["n_inner"], p["n_features"]), dtype=np.float32),
            "y_train": rng.integers(0, p["n_classes"], p["n_inner"]),
            "X_val": rng.standard_normal((p["n_outer"], p["n_features"]), dtype=np.float32),
            "y_val": rng.integers(0, p["n_classes"], p["n_outer"])}
