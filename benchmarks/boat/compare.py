"""Side by side with BOAT (the ``boat-torch`` package) for the first-order methods.

For BOME, V-PBGD, MEHA, BAMM, DARTS and GAFFO this script runs one small float64 problem with the same settings
in ``bilevel`` and in BOAT (VFO, PGDO, MESO, DM, FD, GAFFO), and runs beside them

* an independent reference: a brute-force implementation of the paper's update, written here with plain
  autograd on fresh leaves (it imports nothing from either library);
* "BOAT as read": the update BOAT's source performs, written here as a formula from reading that source (no
  code copied). Where it reproduces BOAT to round-off, the stated reason for a disagreement is confirmed.

It reports, per method, max |x_ours - x_boat| and max |y_ours - y_boat| after 1 and after N outer steps, each
library's distance to the reference, a verdict, and the time per outer step measured paired (same process,
alternating order, several repetitions; the median of the per-repetition ratios BOAT/ours).

Run with BOAT's venv (``boat-torch`` is not a dependency of ``bilevel``) and ``bilevel`` on the path::

    PYTHONPATH=src benchmarks/boat/.venv/bin/python benchmarks/boat/compare.py

Without BOAT installed it still runs ours against the reference and says so.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

import bilevel

try:  # optional: the comparison's other side
    import boat_torch as boat
    BOAT_VERSION: Optional[str] = importlib.metadata.version("boat-torch")
except ImportError:  # pragma: no cover - reported in the output
    boat = None
    BOAT_VERSION = None

# BOAT allocates some work tensors with the default dtype (VFO's flattened gradients): float64 throughout.
torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # timing on a shared 2-core machine: one thread for both libraries

D = torch.float64
TOL = 1e-10  # "agree to round-off": max abs difference of iterates of size O(1)

# ------------------------------------------------------------------------------------------------------ the problem
# Lower level strongly convex in y, not quadratic, with a mixed term whose x-gradient is not polynomial in y; upper
# level not quadratic. x and y have the same size (BOAT's GAFFO requires matching upper/lower variables).
_G = torch.Generator().manual_seed(0)
A = torch.randn(6, 4, generator=_G, dtype=D)
B = torch.randn(6, generator=_G, dtype=D)
X0 = 0.1 * torch.randn(4, generator=_G, dtype=D)
Y0 = torch.randn(4, generator=_G, dtype=D)


def lower(x, y):
    return (0.5 * ((A @ y - B) ** 2).mean() + 0.5 * (torch.exp(x) * y ** 2).sum()
            + 0.1 * torch.log(torch.cosh(y)).sum() + 0.1 * torch.sin(x * y).sum())


def upper(x, y):
    return ((y - 1.0) ** 2).sum() + (torch.sin(y) * x).sum() + 0.05 * (x ** 2).sum()


PROBLEM_TEXT = ("x, y in R^4 (float64); f(x, y) = ||A y - b||^2 / 12 + sum(exp(x) y^2) / 2 + 0.1 sum(log cosh y) "
                "+ 0.1 sum(sin(x y)) (A 6x4, b ~ N(0, 1), seed 0; strongly convex in y near x0); "
                "F(x, y) = ||y - 1||^2 + sum(sin(y) x) + 0.05 ||x||^2; x0 = 0.1 N(0, 1), y0 = N(0, 1)")


# ------------------------------------------------------------------------------- brute-force derivatives (reference)
def gx(fn, x, y):
    """grad_x fn(x, y) on fresh leaves."""
    xl = x.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(xl, y.detach()), xl)
    return g


def gy(fn, x, y):
    """grad_y fn(x, y) on fresh leaves."""
    yl = y.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(x.detach(), yl), yl)
    return g


def hvp(fn, x, y, v, wrt):
    """d/d(x or y) <grad_y fn(x, y), v> on fresh leaves (wrt = 0: the mixed product, 1: the yy product)."""
    xl, yl = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(xl, yl), yl, create_graph=True)
    (h,) = torch.autograd.grad(g @ v, (xl, yl)[wrt])
    return h


Traj = List[Tuple[torch.Tensor, torch.Tensor]]  # (x_n, y_n) after each outer step n = 1..N


# -------------------------------------------------------------------------------------------- ours (bilevel)
def run_ours(method: str, n: int, **kw) -> Tuple[Traj, list]:
    loop = bilevel.OuterLoop(X0.clone(), Y0.clone(), method=method, outer_optimizer="sgd", **kw)
    traj, recs = [], []
    for _ in range(n):
        recs.append(loop.step(upper, lower))
        traj.append((loop.x.detach().clone(), loop.y.detach().clone()))
    return traj, recs


# ------------------------------------------------------------------------------------------------- BOAT's side
class Vec(nn.Module):
    """One vector as BOAT's 'model': forward() returns it (higher's patched copy returns its fast weight)."""

    def __init__(self, v: torch.Tensor):
        super().__init__()
        self.v = nn.Parameter(v.detach().clone())

    def forward(self):
        return self.v


def _lower_var(model, params):
    return model(params=params) if params is not None else model()


def boat_lower(feed, ul_model, ll_model, params=None, **kwargs):
    return lower(ul_model(), _lower_var(ll_model, params))


def boat_upper(feed, ul_model, ll_model, params=None, **kwargs):
    return upper(ul_model(), _lower_var(ll_model, params))


LOSS_CONFIG = {"lower_level_loss": {"function": f"{__name__}.boat_lower", "params": {}},
               "upper_level_loss": {"function": f"{__name__}.boat_upper", "params": {}}}
_LOG_DIR = tempfile.mkdtemp(prefix="boat_compare_")


def boat_problem(*, x_lr: float, y_lr: float, lower_iters: int, fo_op=None, gm_op=None, na_op=None,
                 sections: Optional[dict] = None):
    """A built ``boat_torch.Problem`` on the problem above with SGD (no momentum) for x and y."""
    xm, ym = Vec(X0), Vec(Y0)
    cfg = {
        "fo_op": fo_op, "gm_op": gm_op, "na_op": na_op, "return_grad": False, "lower_iters": lower_iters,
        "device": "cpu", "accumulate_grad": False, "copy_last_param": True, "fo_ol_batch_input": False,
        "loss_log_path": os.path.join(_LOG_DIR, "loss_log.json"),
        "DI": {"lr": 0.0}, "GDA": {"alpha_init": 0.0, "alpha_decay": 1.0}, "RGT": {"truncate_iter": 0},
        "lower_level_model": ym, "upper_level_model": xm,
        "lower_level_opt": torch.optim.SGD(ym.parameters(), lr=y_lr),
        "upper_level_opt": torch.optim.SGD(xm.parameters(), lr=x_lr),
        "lower_level_var": list(ym.parameters()), "upper_level_var": list(xm.parameters()),
    }
    cfg.update(sections or {})
    prob = boat.Problem(cfg, LOSS_CONFIG)
    prob.build_ll_solver()
    prob.build_ul_solver()
    return prob, xm, ym


def run_boat(n: int, **kw) -> Traj:
    prob, xm, ym = boat_problem(**kw)
    traj = []
    for k in range(n):
        prob.run_iter({}, {}, k)
        traj.append((xm.v.detach().clone(), ym.v.detach().clone()))
    return traj


# ================================================================================================== the methods
# Each returns a dict: settings, the two runs, the reference (in each library's phase where they differ), the
# BOAT-as-read model, the reason for a disagreement, and the two step functions for the timing.

def bome_case(n: int) -> dict:
    T, alpha, xi, eta = 3, 0.3, 0.05, 5.0  # eta large enough that the multiplier is active at every step

    def reference(x, y, steps, phi="value"):
        """BOME, Algorithm 1 (Liu et al. 2022): theta_T from y, q = f(x, y) - f(x, theta_T), one step xi on the
        joint (x, y) along grad F + lam grad q, lam = max(phi - <grad F, grad q>, 0) / ||grad q||^2."""
        out = []
        for _ in range(steps):
            th = y
            for _ in range(T):
                th = th - alpha * gy(lower, x, th)
            gFx, gFy = gx(upper, x, y), gy(upper, x, y)
            gqx, gqy = gx(lower, x, y) - gx(lower, x, th), gy(lower, x, y)
            n2 = gqx @ gqx + gqy @ gqy
            q = lower(x, y) - lower(x, th)
            phi_v = eta * q if phi == "value" else eta * n2
            lam = torch.clamp(phi_v - (gFx @ gqx + gFy @ gqy), min=0.0) / n2
            x, y = x - xi * (gFx + lam * gqx), y - xi * (gFy + lam * gqy)
            out.append((x, y))
        return out

    def boat_as_read(x, y, steps):
        """VFO as its source reads: y pre-stepped T times (step xi) before anything is evaluated; theta_T from the
        old y by heavy ball (momentum 0.5, step alpha); q and both gradients at the pre-stepped y;
        lam = relu((u1 q - <gF, gq>) / (||gq||^2 + 1e-8)); y's step adds the last pre-step's gradient."""
        out = []
        for _ in range(steps):
            th, buf = y, None
            for _ in range(T):
                g = gy(lower, x, th)
                buf = g if buf is None else 0.5 * buf + g
                th = th - alpha * buf
            yp, glast = y, None
            for _ in range(T):
                glast = gy(lower, x, yp)
                yp = yp - xi * glast
            gFx, gFy = gx(upper, x, yp), gy(upper, x, yp)
            gqx, gqy = gx(lower, x, yp) - gx(lower, x, th), gy(lower, x, yp)
            q = lower(x, yp) - lower(x, th)
            lam = torch.relu((eta * q - (gFx @ gqx + gFy @ gqy)) / (gqx @ gqx + gqy @ gqy + 1e-8))
            x, y = x - xi * (gFx + lam * gqx), yp - xi * (gFy + lam * gqy + glast)
            out.append((x, y))
        return out

    ours_kw = dict(method="bome", outer_lr=xi, inner_steps=T, inner_lr=alpha, y_lr=xi, eta=eta, phi="value")
    boat_kw = dict(x_lr=xi, y_lr=xi, lower_iters=T, fo_op="VFO",
                   sections={"VFO": {"y_hat_lr": alpha, "u1": eta, "eta": eta}})
    return {
        "method": "bome", "boat_op": "VFO (fo_op)",
        "settings": {"T (inner_steps / lower_iters)": T, "theta step alpha (inner_lr / VFO.y_hat_lr)": alpha,
                     "x and y step xi (outer_lr = y_lr / upper and lower SGD lr)": xi,
                     "eta (eta / VFO.u1)": eta, "phi": "value (eta * q): BOAT's only form"},
        "ours_kw": ours_kw, "boat_kw": boat_kw, "reference": reference, "boat_as_read": boat_as_read,
        "reference_name": "BOME Algorithm 1 (Liu, Ye, Wright, Stone & Liu, NeurIPS 2022), phi = eta q",
        "why": ("VFO pre-steps y T times with the lower optimizer before evaluating anything (the paper evaluates "
                "at y_k), runs theta with heavy-ball momentum 0.5 (hard-coded; the paper: plain gradient steps), "
                "adds the last pre-step's grad_y f into y's step (a gradient left in .grad), and adds 1e-8 to "
                "||grad q||^2"),
        "note": ("with T = 1 BOAT's theta equals its pre-stepped y, so q = 0 and grad_x q = 0 at every step: "
                 "VFO degenerates; no BOAT setting reproduces Algorithm 1"),
    }


def vpbgd_case(n: int) -> dict:
    T, beta, gamma, a = 3, 0.3, 3.0, 0.1
    decay = min(1.0 / (gamma + 1e-8), 1.0)  # PGDO scales its loss by lr_decay = min(1 / (gamma + 1e-8), 1)
    step = a * decay

    def reference(x, y, steps):
        """V-PBGD, Algorithm 1 (Shen & Chen 2023), value-gap penalty: y_hat by T gradient steps (warm-started from
        the previous y_hat, y_hat_0 = y_0), then one joint step alpha on F + gamma (f(x, y) - f(x, y_hat))."""
        out, yh = [], y
        for _ in range(steps):
            for _ in range(T):
                yh = yh - beta * gy(lower, x, yh)
            dx = gx(upper, x, y) + gamma * (gx(lower, x, y) - gx(lower, x, yh))
            dy = gy(upper, x, y) + gamma * gy(lower, x, y)
            x, y = x - step * dx, y - step * dy
            out.append((x, y))
        return out

    ours_kw = dict(method="vpbgd", outer_lr=step, inner_steps=T, inner_lr=beta, gamma=gamma, y_lr=step,
                   yhat_start="carried")
    boat_kw = dict(x_lr=a, y_lr=a, lower_iters=T, fo_op="PGDO",
                   sections={"PGDO": {"y_hat_lr": beta, "gamma_init": gamma, "gamma_max": gamma,
                                      "gamma_argmax_step": 1, "update_y_ahead": False, "penalty": "difference"}})
    return {
        "method": "vpbgd", "boat_op": "PGDO (fo_op), penalty='difference'",
        "settings": {"T": T, "y_hat step beta (inner_lr / PGDO.y_hat_lr)": beta,
                     "gamma (gamma / gamma_init = gamma_max)": gamma,
                     "x and y step": f"BOAT SGD lr {a} times its lr_decay min(1/(gamma+1e-8), 1); ours "
                                     f"outer_lr = y_lr = {step!r}",
                     "y_hat": "carried across steps (ours yhat_start='carried'; BOAT update_y_ahead=False)"},
        "ours_kw": ours_kw, "boat_kw": boat_kw, "reference": reference, "boat_as_read": reference,
        "reference_name": "V-PBGD Algorithm 1 (Shen & Chen, ICML 2023), value-gap penalty, y_hat warm-started",
        "why": "",
        "note": "PGDO's gamma schedule held constant (gamma_init = gamma_max); its 1/gamma loss scaling is mapped "
                "into our step sizes",
    }


def vpbgd_gradient_penalty_case(n: int) -> dict:
    """BOAT only: PGDO's penalty='gradient' against the paper's gradient-norm penalty (ours has no such variant)."""
    T, beta, gamma, a = 3, 0.3, 3.0, 0.1
    step = a * min(1.0 / (gamma + 1e-8), 1.0)

    def pen(x, y):  # ||grad_y f(x, y)||^2, differentiable
        xl, yl = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
        (g,) = torch.autograd.grad(lower(xl, yl), yl, create_graph=True)
        return xl, yl, (g ** 2).sum()

    def reference(x, y, steps):
        """PBGD with the squared gradient-norm penalty: one joint step on F + gamma ||grad_y f(x, y)||^2."""
        out = []
        for _ in range(steps):
            xl, yl, p = pen(x, y)
            px, py = torch.autograd.grad(p, (xl, yl))
            x, y = x - step * (gx(upper, x, y) + gamma * px), y - step * (gy(upper, x, y) + gamma * py)
            out.append((x, y))
        return out

    def boat_as_read(x, y, steps):
        """PGDO 'gradient' as read: grad_y f is taken without a graph, so the penalty is a constant and the step is
        plain gradient descent on F."""
        out = []
        for _ in range(steps):
            x, y = x - step * gx(upper, x, y), y - step * gy(upper, x, y)
            out.append((x, y))
        return out

    boat_kw = dict(x_lr=a, y_lr=a, lower_iters=T, fo_op="PGDO",
                   sections={"PGDO": {"y_hat_lr": beta, "gamma_init": gamma, "gamma_max": gamma,
                                      "gamma_argmax_step": 1, "update_y_ahead": False, "penalty": "gradient"}})
    return {
        "method": "vpbgd (gradient penalty)", "boat_op": "PGDO (fo_op), penalty='gradient'",
        "settings": {"gamma": gamma, "x and y step": step, "T": T},
        "ours_kw": None, "boat_kw": boat_kw, "reference": reference, "boat_as_read": boat_as_read,
        "reference_name": "PBGD with the gradient-norm penalty (Shen & Chen, ICML 2023)",
        "why": ("PGDO takes grad_y f without create_graph, so gamma ||grad_y f||^2 is a constant: its 'gradient' "
                "penalty contributes no gradient and the step is gradient descent on F alone"),
        "note": "no counterpart in ours (vpbgd has the value-gap penalty only); BOAT against the reference only",
    }


def meha_case(n: int) -> dict:
    eta, gamma, c0, p, beta, alpha = 0.2, 2.0, 0.2, 0.25, 0.1, 0.05

    def ck(k):
        return c0 * (k + 1) ** p

    def reference(x, y, steps):
        """MEHA (Liu, Liu, Yao, Zeng & Zhang, ICML 2024), Gauss-Seidel theta -> x -> y:
        theta+ = theta - eta (grad_y f(x, theta) + (theta - y) / gamma);
        x+ = x - alpha (grad_x F(x, y) / c_k + grad_x f(x, y) - grad_x f(x, theta+));
        y+ = y - beta (grad_y F(x+, y) / c_k + grad_y f(x+, y) - (y - theta+) / gamma)."""
        out, th = [], y
        for k in range(steps):
            c = ck(k)
            th = th - eta * (gy(lower, x, th) + (th - y) / gamma)
            xn = x - alpha * (gx(upper, x, y) / c + gx(lower, x, y) - gx(lower, x, th))
            y = y - beta * (gy(upper, xn, y) / c + gy(lower, xn, y) - (y - th) / gamma)
            x = xn
            out.append((x, y))
        return out

    def boat_as_read(x, y, steps):
        """MESO as read: theta step (gamma_1 = 1/gamma), then y at the OLD x with the penalty's gradient scaled by
        (1 - eta gamma_1) (theta's fresh update is not detached from y), then x at the NEW y; c_0 = 0.2 always."""
        g1 = 1.0 / gamma
        out, th = [], y
        for k in range(steps):
            c = 0.2 if k == 0 else c0 * (k + 1) ** 0.25
            th = th - eta * (gy(lower, x, th) + g1 * (th - y))
            y = y - beta * (gy(upper, x, y) / c + gy(lower, x, y) - g1 * (1 - eta * g1) * (y - th))
            x = x - alpha * (gx(upper, x, y) / c + gx(lower, x, y) - gx(lower, x, th))
            out.append((x, y))
        return out

    ours_kw = dict(method="meha", outer_lr=alpha, inner_steps=1, inner_lr=eta, gamma=gamma, c=c0, p=p, y_lr=beta)
    boat_kw = dict(x_lr=alpha, y_lr=beta, lower_iters=1, fo_op="MESO",
                   sections={"MESO": {"eta": eta, "gamma_1": 1.0 / gamma, "c0": c0, "y_hat_lr": eta}})
    return {
        "method": "meha", "boat_op": "MESO (fo_op)",
        "settings": {"theta step eta (inner_lr / MESO.eta)": eta, "gamma (gamma / 1 / MESO.gamma_1)": gamma,
                     "c_k = c (k+1)^p (c / MESO.c0; p = 0.25 fixed in BOAT)": f"c = {c0}, p = {p}",
                     "y step beta (y_lr / lower SGD lr)": beta, "x step alpha (outer_lr / upper SGD lr)": alpha,
                     "inner_steps": 1},
        "ours_kw": ours_kw, "boat_kw": boat_kw, "reference": reference, "boat_as_read": boat_as_read,
        "reference_name": "MEHA (Liu, Liu, Yao, Zeng & Zhang, ICML 2024), Gauss-Seidel order theta -> x -> y",
        "why": ("MESO updates y before x, at the old x, and then x at the new y (the paper: x first at (x_k, y_k), "
                "then y at x_{k+1}); its y step scales the proximal term by (1 - eta gamma_1) because theta's fresh "
                "update is not detached; its c_0 is hard-coded to 0.2 (equal to c here) and p to 0.25"),
        "note": ("ours takes y's step (which needs x_{k+1}) at the start of the next outer step: y_n is read after "
                 "step n + 1"),
        "ours_y_lags": True,
    }


def bamm_case(n: int) -> dict:
    s, eta0, ul_lr = 0.2, 0.5, 0.25
    z_lr, alpha = eta0 * s, ul_lr * s  # DM (RAD, tau = 0): v step eta0 * lr_y, x step lr_x * lr_y

    def reference(x, y, steps):
        """sl-BAMM (Liu, Liu, Yao, Zeng & Zhang, ICML 2023) with mu = 0 (strongly convex f), all at (x_k, y_k, z_k):
        x+ = x - alpha (grad_x F - grad2_xy f z); y+ = y - s grad_y f; z+ = z - eta (grad2_yy f z - grad_y F)."""
        out, z = [], torch.zeros_like(y)
        for _ in range(steps):
            dx = gx(upper, x, y) - hvp(lower, x, y, z, 0)
            r = hvp(lower, x, y, z, 1) - gy(upper, x, y)
            x, y, z = x - alpha * dx, y - s * gy(lower, x, y), z - z_lr * r
            out.append((x, y))
        return out

    def reference_next_y(x, y, steps):
        """The other reading: y's gradient step first, then z and x's direction at (x_k, y_{k+1}) (x with z_k)."""
        out, z = [], torch.zeros_like(y)
        for _ in range(steps):
            y1 = y - s * gy(lower, x, y)
            dx = gx(upper, x, y1) - hvp(lower, x, y1, z, 0)
            r = hvp(lower, x, y1, z, 1) - gy(upper, x, y1)
            x, y, z = x - alpha * dx, y1, z - z_lr * r
            out.append((x, y))
        return out

    def boat_as_read(x, y, steps):
        """DM (NGD + DM, RAD) as read: a look-ahead yt(x) = y - s grad_y f(x, y) kept differentiable in x; the
        x-direction is the total x-derivative of F(x, yt(x)) - <grad_y f(x, yt(x)), v>; v's residual at yt;
        y steps with the gradient AT yt: y+ = y - s grad_y f(x, yt)."""
        out, v = [], torch.zeros_like(y)
        for _ in range(steps):
            xl = x.detach().clone().requires_grad_()
            y0 = y.detach().clone().requires_grad_()
            (g0,) = torch.autograd.grad(lower(xl, y0), y0, create_graph=True)
            yt = y0 - s * g0
            (gt,) = torch.autograd.grad(lower(xl, yt), yt, create_graph=True)
            (dx,) = torch.autograd.grad(upper(xl, yt) - gt @ v, xl, retain_graph=True)
            (hv,) = torch.autograd.grad(gt @ v, yt, retain_graph=True)
            (gFy,) = torch.autograd.grad(upper(xl, yt), yt)
            ytd = yt.detach()
            x, y, v = x - alpha * dx, y - s * gy(lower, x, ytd), v - z_lr * (hv - gFy)
            out.append((x.detach(), y.detach()))
        return out

    ours_kw = dict(method="bamm", outer_lr=alpha, inner_steps=1, inner_lr=s, mu0=0.0, z_lr=z_lr)
    boat_kw = dict(x_lr=ul_lr, y_lr=s, lower_iters=1, gm_op=["NGD", "DM"], na_op=["RAD"],
                   sections={"DM": {"auxiliary_v_lr": z_lr, "tau": 0.0, "p": 1.0, "mu0": 0.0, "eta0": eta0,
                                    "strategy": "s1"}})
    return {
        "method": "bamm", "boat_op": "DM (gm_op [NGD, DM], na_op [RAD])",
        "settings": {"mu": "0 (strongly convex lower level; BOAT's averaging needs GDA with its own step "
                           "schedules s1-s3, not mapped)",
                     "y step s (inner_lr / lower SGD lr)": s,
                     "z step (z_lr / DM.eta0 * lower lr, tau = 0)": z_lr,
                     "x step (outer_lr / upper lr * lower lr, tau = 0)": alpha, "inner_steps": 1, "z_0": 0},
        "ours_kw": ours_kw, "boat_kw": boat_kw, "reference": reference, "boat_as_read": boat_as_read,
        "extra_references": {"sl-BAMM read with z and x at y_{k+1}": reference_next_y},
        "reference_name": "sl-BAMM (Liu, Liu, Yao, Zeng & Zhang, ICML 2023), mu = 0, Jacobi at (x_k, y_k, z_k)",
        "why": ("DM evaluates everything at a look-ahead yt = y - s grad_y f(x, y) kept differentiable in x (so the "
                "x-direction gains -s grad2_xy f (grad_y F - H v)), and steps y with the gradient at yt "
                "(y+ = y - s grad_y f(x, yt), an extragradient step) instead of y - s grad_y f(x, y)"),
        "note": ("neither reading of the single-loop update (z and x at y_k, or at y_{k+1}) takes BOAT's y step: "
                 "see extra_references in compare.json"),
    }


def darts_case(n: int, K: int = 1) -> dict:
    s, eps, alpha = 0.3, 0.01, 0.05  # xi = s (BOAT ties xi to the lower lr; ours' default xi = inner_lr)

    def w_steps(x, w, k):
        for _ in range(k):
            w = w - s * gy(lower, x, w)
        return w

    def a_half(x, w):
        """DARTS Eq. 7-8: x - alpha (grad_x F(x, w') - xi (grad_x f(x, w+) - grad_x f(x, w-)) / (2 e)),
        w' = w - xi grad_w f(x, w), v = grad_w F(x, w'), w+- = w +- e v, e = eps / ||v||."""
        w1 = w_steps(x, w, 1)
        v = gy(upper, x, w1)
        e = eps / v.norm()
        fd = (gx(lower, x, w + e * v) - gx(lower, x, w - e * v)) / (2 * e)
        return x - alpha * (gx(upper, x, w1) - s * fd)

    def reference(x, y, steps):
        """DARTS Algorithm 1 (Liu, Simonyan & Yang, ICLR 2019): alternately the architecture step (Eq. 7-8) at the
        current weights and the weight step(s) at the new architecture -- in ours' phase: weight steps first."""
        out = []
        for _ in range(steps):
            y = w_steps(x, y, K)
            x = a_half(x, y)
            out.append((x, y))
        return out

    def reference_boat_phase(x, y, steps):
        """The same alternation as printed in Algorithm 1: architecture step first, then the weight step(s) at the
        new x."""
        out = []
        for _ in range(steps):
            x = a_half(x, y)
            y = w_steps(x, y, K)
            out.append((x, y))
        return out

    def boat_as_read(x, y, steps):
        """FD (NGD + FD) as read: y_K = K weight steps at the old x_k; x's direction grad_x F(x, y_K) - xi times the
        finite difference of grad_x f taken around the OLD y along v = grad_y F(x, y_K); y+ = y_K. With K = 1 this
        is Eq. 7-8 at (x_k, y_k) with the weight step at the old x_k."""
        out = []
        for _ in range(steps):
            yk = w_steps(x, y, K)
            v = gy(upper, x, yk)
            e = eps / v.norm()
            fd = (gx(lower, x, y + e * v) - gx(lower, x, y - e * v)) / (2 * e)
            x, y = x - alpha * (gx(upper, x, yk) - s * fd), yk
            out.append((x, y))
        return out

    ours_kw = dict(method="darts", outer_lr=alpha, inner_steps=K, inner_lr=s, epsilon=eps)
    boat_kw = dict(x_lr=alpha, y_lr=s, lower_iters=K, gm_op=["NGD"], na_op=["FD"], sections={"FD": {"r": eps}})
    if K == 1:
        why = ("FD takes the weight step at the old architecture x_k (both from the same point); DARTS Algorithm 1 "
               "takes it at the updated architecture. The architecture direction itself is DARTS's Eq. 7-8 in "
               "both (BOAT's first x step equals the reference's)")
        note = ("ours' outer step is the weight step then the architecture step (DARTS's alternation starting with "
                "the weight step), so ours is compared with the reference in that phase and BOAT with Algorithm 1 "
                "as printed")
    else:
        why = (f"with K = {K} FD takes v = grad_y F at y_K but the finite difference of grad_x f around the old y "
               "(two different points), and the look-ahead is y_K itself; the weight steps are at the old x_k")
        note = ("DARTS has one weight step per architecture step; the reference generalizes Algorithm 1 to K weight "
                "steps (Eq. 7-8 at the weights reached)")
    return {
        "method": "darts" if K == 1 else f"darts (K = {K})", "boat_op": "FD (gm_op [NGD], na_op [FD])",
        "settings": {"K (inner_steps / lower_iters)": K, "weight step = xi (inner_lr, xi default / lower lr)": s,
                     "epsilon (epsilon / FD.r), e = epsilon / ||v||": eps,
                     "x step (outer_lr / upper lr)": alpha},
        "ours_kw": ours_kw, "boat_kw": boat_kw, "reference": reference, "boat_as_read": boat_as_read,
        "reference_boat_phase": reference_boat_phase,
        "reference_name": "DARTS Algorithm 1 with Eq. 7-8 (Liu, Simonyan & Yang, ICLR 2019)",
        "why": why, "note": note,
    }


def gaffo_case(n: int) -> dict:
    eta, g1, g2, c, p, ylr, zlr, alpha, sigma = 0.2, 2.0, 1.0, 1.0, 0.25, 0.1, 0.1, 0.05, 0.01

    def reference(x, y, steps):
        """BiC-GAFFA (Yao, Yin, Zeng & Zhang, arXiv 2406.01992) without lower-level constraints (z = lam = 0):
        theta+ = theta - eta (grad_y f(x, theta) + (theta - y) / gamma1); then from (x_k, y_k):
        x+ = x - alpha (grad_x F / c_k + grad_x f(x, y) - grad_x f(x, theta+)),
        y+ = y - a (grad_y F / c_k + grad_y f(x, y) - (y - theta+) / gamma1)."""
        out, th = [], y
        for k in range(steps):
            ck = c * (k + 1) ** p
            th = th - eta * (gy(lower, x, th) + (th - y) / g1)
            x, y = (x - alpha * (gx(upper, x, y) / ck + gx(lower, x, y) - gx(lower, x, th)),
                    y - ylr * (gy(upper, x, y) / ck + gy(lower, x, y) - (y - th) / g1))
            out.append((x, y))
        return out

    def boat_as_read(x, y, steps):
        """GAFFO as read: y := x; y1 = y - s grad_y f(x, y); x+ = x + alpha (grad_y F(x, y1) / lambda
        - (grad_y f(x, y1 + sigma g) - g)), g = grad_y f(x, y1); y+ = y1 (a meta-learning surrogate)."""
        out = []
        for _ in range(steps):
            y1 = x - eta * gy(lower, x, x)
            g = gy(lower, x, y1)
            asc = gy(upper, x, y1) / c - (gy(lower, x, y1 + sigma * g) - g)
            x, y = x + alpha * asc, y1
            out.append((x, y))
        return out

    ours_kw = dict(method="gaffo", outer_lr=alpha, inner_steps=1, inner_lr=eta, gamma1=g1, gamma2=g2, c=c, p=p,
                   y_lr=ylr, z_lr=zlr)
    boat_kw = dict(x_lr=alpha, y_lr=eta, lower_iters=1, fo_op="GAFFO",
                   sections={"GAFFO": {"lambda": c, "sigma": sigma, "lower_step_size": eta}})
    return {
        "method": "gaffo", "boat_op": "GAFFO (fo_op)",
        "settings": {"inner step eta (inner_lr / GAFFO.lower_step_size)": eta,
                     "penalty c (c / GAFFO.lambda)": c, "gamma1, gamma2, p": f"{g1}, {g2}, {p} (no BOAT "
                     "counterpart)", "y_lr, z_lr": f"{ylr}, {zlr}", "x step (outer_lr / upper lr)": alpha,
                     "BOAT sigma (probe step; no counterpart)": sigma, "lower-level constraint": "none"},
        "ours_kw": ours_kw, "boat_kw": boat_kw, "reference": reference, "boat_as_read": boat_as_read,
        "reference_name": "BiC-GAFFA (Yao, Yin, Zeng & Zhang, arXiv 2406.01992), no lower-level constraint",
        "why": ("BOAT's GAFFO is not BiC-GAFFA: it overwrites y with x every step (it needs x and y of the same "
                "shape), takes one lower step, and moves x along grad_y F / lambda minus a finite-difference "
                "Hessian-gradient probe (a meta-learning surrogate); there is no theta, no proximal gamma1, no "
                "c_k schedule and no multiplier"),
        "note": "no setting maps one onto the other; the row records how far apart they are",
    }


CASES: List[Callable[[int], dict]] = [bome_case, vpbgd_case, meha_case, bamm_case, darts_case, gaffo_case,
                                      lambda n: darts_case(n, K=3), vpbgd_gradient_penalty_case]


# ================================================================================================== evaluation
def _dist(a: Traj, b: Traj, i: int) -> Tuple[float, float]:
    return (float((a[i][0] - b[i][0]).abs().max()), float((a[i][1] - b[i][1]).abs().max()))


def _pair(a: Optional[Traj], b: Optional[Traj], n: int) -> Optional[dict]:
    if a is None or b is None:
        return None
    x1, y1 = _dist(a, b, 0)
    xn, yn = _dist(a, b, n - 1)
    return {"x_after_1": x1, "y_after_1": y1, f"x_after_{n}": xn, f"y_after_{n}": yn,
            "max": max(x1, y1, xn, yn)}


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else ("0" if v == 0 else f"{v:.1e}")


def evaluate(case: dict, n: int) -> dict:
    out = {k: case[k] for k in ("method", "boat_op", "settings", "reference_name", "why", "note")}
    ref = case["reference"](X0.clone(), Y0.clone(), n)
    ref_b = case.get("reference_boat_phase", case["reference"])(X0.clone(), Y0.clone(), n)
    ours = None
    if case["ours_kw"] is not None:
        lag = case.get("ours_y_lags", False)
        traj, recs = run_ours(n=n + 1 if lag else n, **case["ours_kw"])
        ours = [(traj[i][0], traj[i + 1][1]) for i in range(n)] if lag else traj
        out["ours_records"] = [{k: float(v) for k, v in rec.items()
                                if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)}
                               for rec in recs[:n]]
    bt = run_boat(n=n, **case["boat_kw"]) if boat is not None else None
    model = case["boat_as_read"](X0.clone(), Y0.clone(), n)
    out["ours_vs_boat"] = _pair(ours, bt, n)
    out["ours_vs_reference"] = _pair(ours, ref, n)
    out["boat_vs_reference"] = _pair(bt, ref_b, n)
    out["boat_vs_boat_as_read"] = _pair(bt, model, n)
    out["extra_references"] = {name: {"ours": _pair(ours, fn(X0.clone(), Y0.clone(), n), n),
                                      "boat": _pair(bt, fn(X0.clone(), Y0.clone(), n), n)}
                               for name, fn in case.get("extra_references", {}).items()}
    out["final"] = {"reference": {"x": ref[-1][0].tolist(), "y": ref[-1][1].tolist()}}
    if ours is not None:
        out["final"]["ours"] = {"x": ours[-1][0].tolist(), "y": ours[-1][1].tolist()}
    if bt is not None:
        out["final"]["boat"] = {"x": bt[-1][0].tolist(), "y": bt[-1][1].tolist()}
    out["verdict"] = verdict(out)
    return out


def verdict(r: dict) -> str:
    ob, orf, brf, bm = (r[k]["max"] if r[k] else None for k in
                        ("ours_vs_boat", "ours_vs_reference", "boat_vs_reference", "boat_vs_boat_as_read"))
    ok = lambda v: v is not None and v <= TOL  # noqa: E731
    if brf is None:
        if orf is None:
            return "BOAT not installed (a BOAT-only row): nothing compared"
        return ("BOAT not installed: ours vs reference " + ("agree to round-off" if ok(orf) else
                                                            f"DIFFER ({_fmt(orf)})"))
    if ob is None:  # BOAT-only row
        side = "BOAT matches the reference" if ok(brf) else f"BOAT differs from the reference ({_fmt(brf)})"
        return side + (f": {r['why']}" if r["why"] and not ok(brf) else "") + (
            f" (confirmed: BOAT as read reproduces BOAT to {_fmt(bm)})" if ok(bm) else "")
    if ok(ob):
        return "agree to round-off" + ("; the reference agrees with both" if ok(orf) and ok(brf) else
                                       f"; the reference differs ({_fmt(orf)})")
    if ok(orf) and not ok(brf):
        side = "the reference sides with ours"
    elif ok(brf) and not ok(orf):
        side = "the reference sides with BOAT"
    else:
        side = f"the reference sides with neither (ours {_fmt(orf)}, BOAT {_fmt(brf)})"
    conf = (f"confirmed: BOAT as read reproduces BOAT to {_fmt(bm)}" if ok(bm)
            else f"NOT explained: BOAT as read is {_fmt(bm)} from BOAT")
    return f"BOAT differs: {r['why']} ({conf}); {side}"


# ====================================================================================================== timing
def timing(case: dict, reps: int, steps: int) -> Optional[dict]:
    """Paired: each repetition builds ours, BOAT and BOAT without its per-step JSON loss log (untimed), then
    interleaves them step by step (the order rotating each step), timing every outer step; a repetition's ratio is
    BOAT's total over ours' total, and the report takes the median over repetitions (repetition 0 warms up)."""
    if boat is None or case["ours_kw"] is None:
        return None
    per = {"ours": [], "boat": [], "boat_nolog": []}
    ratios, ratios_nolog = [], []
    who_all = ("ours", "boat", "boat_nolog")
    for r in range(reps + 1):
        loop = bilevel.OuterLoop(X0.clone(), Y0.clone(), outer_optimizer="sgd", **case["ours_kw"])
        prob, _, _ = boat_problem(**case["boat_kw"])
        prob_nolog, _, _ = boat_problem(**case["boat_kw"])
        prob_nolog.save_losses = lambda **kw: None
        run = {"ours": lambda k: loop.step(upper, lower), "boat": lambda k: prob.run_iter({}, {}, k),
               "boat_nolog": lambda k: prob_nolog.run_iter({}, {}, k)}
        t = dict.fromkeys(who_all, 0.0)
        for k in range(steps):
            for j in range(3):
                who = who_all[(k + j) % 3]
                t0 = time.perf_counter()
                run[who](k)
                t[who] += time.perf_counter() - t0
        if r == 0:
            continue
        for w in who_all:
            per[w].append(t[w] / steps)
        ratios.append(t["boat"] / t["ours"])
        ratios_nolog.append(t["boat_nolog"] / t["ours"])
    return {"reps": reps, "steps_per_rep": steps,
            "ours_ms_per_step_median": 1e3 * statistics.median(per["ours"]),
            "boat_ms_per_step_median": 1e3 * statistics.median(per["boat"]),
            "boat_nolog_ms_per_step_median": 1e3 * statistics.median(per["boat_nolog"]),
            "ratio_boat_over_ours_median": statistics.median(ratios),
            "ratio_boat_over_ours_min_max": [min(ratios), max(ratios)],
            "ratio_boat_nolog_over_ours_median": statistics.median(ratios_nolog),
            "ratios": ratios, "ratios_nolog": ratios_nolog}


# ====================================================================================================== reports
SHOWN_STATE = ("bome_lambda", "value_gap", "penalty_gap", "meha_c", "bamm_mu", "gaffa_c", "fd_eps")

def markdown(results: List[dict], meta: dict) -> str:
    n = meta["outer_steps"]
    lines = [
        "# bilevel vs BOAT: the first-order methods, side by side",
        "",
        f"Generated by `benchmarks/boat/compare.py` ({meta['generated']}; torch {meta['torch']}, boat-torch "
        f"{meta['boat_torch']}, Python {meta['python']}, {meta['threads']} thread). `boat-torch` lives in its own "
        "venv (`benchmarks/boat/.venv`) and is not a dependency of `bilevel`.",
        "",
        f"**Problem.** {PROBLEM_TEXT}. {n} outer steps, SGD without momentum for x and y in both libraries.",
        "",
        "**Columns.** Distances are max |difference| over the coordinates of x and of y (the larger of the two), "
        f"after 1 and after {n} outer steps. *Reference*: a brute-force implementation of the paper's update in "
        "the script (plain autograd on fresh leaves, nothing imported from either library). *BOAT as read*: the "
        "update BOAT's source performs, written as a formula in the script; where it reproduces BOAT to round-off "
        "the stated reason is confirmed. Round-off = at most "
        f"{TOL:g}. Time: BOAT's `Problem.run_iter` over ours' `OuterLoop.step` per outer step, paired: "
        f"{meta['timing_reps']} repetitions of {meta['timing_steps']} outer steps, the libraries interleaved step "
        "by step in one process (order rotating, one thread), the median of the per-repetition ratios; in "
        "brackets BOAT without its per-step JSON loss log (`save_losses`). Small-problem times: per-step "
        "overhead, not arithmetic; on this shared 2-core machine the medians moved by up to about a third "
        "between runs (read them as 'BOAT takes about 1.3-3x our time per step here', not to two digits).",
        "",
        "| method | BOAT op | ours vs BOAT (1 / N steps) | ours vs ref | BOAT vs ref | BOAT vs BOAT-as-read "
        "| verdict | time BOAT/ours |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ob = r["ours_vs_boat"]
        obs = "n/a" if ob is None else (f"{_fmt(max(ob['x_after_1'], ob['y_after_1']))} / "
                                        f"{_fmt(max(ob[f'x_after_{n}'], ob[f'y_after_{n}']))}")
        tm = r.get("timing")
        tms = "n/a" if not tm else (f"{tm['ratio_boat_over_ours_median']:.2f}x "
                                    f"({tm['ratio_boat_nolog_over_ours_median']:.2f}x)")
        g = lambda k: _fmt(r[k]["max"]) if r[k] else "n/a"  # noqa: E731
        lines.append(f"| {r['method']} | {r['boat_op']} | {obs} | {g('ours_vs_reference')} | "
                     f"{g('boat_vs_reference')} | {g('boat_vs_boat_as_read')} | {r['verdict']} | {tms} |")
    lines += ["", "## Settings and notes per method", ""]
    for r in results:
        lines.append(f"### {r['method']} vs {r['boat_op']}")
        lines.append("")
        lines.append(f"- reference: {r['reference_name']}")
        for k, v in r["settings"].items():
            lines.append(f"- {k}: {v}")
        if r["note"]:
            lines.append(f"- note: {r['note']}")
        for key in SHOWN_STATE:
            if r.get("ours_records") and key in r["ours_records"][0]:
                vals = ", ".join(f"{rec[key]:.3g}" for rec in r["ours_records"])
                lines.append(f"- ours' {key} per step: {vals}")
        for name, d in r.get("extra_references", {}).items():
            lines.append(f"- against {name}: ours {_fmt(d['ours']['max'] if d['ours'] else None)}, "
                         f"BOAT {_fmt(d['boat']['max'] if d['boat'] else None)}")
        tm = r.get("timing")
        if tm:
            lines.append(f"- time per outer step (median): ours {tm['ours_ms_per_step_median']:.3f} ms, BOAT "
                         f"{tm['boat_ms_per_step_median']:.3f} ms ({tm['boat_nolog_ms_per_step_median']:.3f} ms "
                         f"without its loss log); ratio range {tm['ratio_boat_over_ours_min_max'][0]:.2f}-"
                         f"{tm['ratio_boat_over_ours_min_max'][1]:.2f}")
        lines.append("")
    lines += ["## Reproduce", "", "```", "python3 -m venv benchmarks/boat/.venv",
              "benchmarks/boat/.venv/bin/pip install torch==2.13.0",
              "benchmarks/boat/.venv/bin/pip install --no-deps boat-torch==1.1.1 higher==0.2.1",
              "benchmarks/boat/.venv/bin/pip install 'numpy<=1.26.4' matplotlib setuptools",
              "PYTHONPATH=src benchmarks/boat/.venv/bin/python benchmarks/boat/compare.py", "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="outer steps compared (default 5)")
    ap.add_argument("--reps", type=int, default=15, help="paired timing repetitions (default 15)")
    ap.add_argument("--timing-steps", type=int, default=20, help="outer steps per timing repetition (default 20)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results",
                                                  "boat"), help="output folder (default benchmarks/results/boat)")
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be at least 2")
    if boat is None:
        print("boat-torch is not installed: running ours against the reference only", file=sys.stderr)
    meta = {"generated": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "boat_torch": BOAT_VERSION,
            "python": platform.python_version(), "threads": torch.get_num_threads(), "outer_steps": args.steps,
            "timing_reps": args.reps, "timing_steps": args.timing_steps, "tolerance": TOL, "problem": PROBLEM_TEXT}
    results = []
    for make in CASES:
        case = make(args.steps)
        r = evaluate(case, args.steps)
        if not args.no_timing:
            r["timing"] = timing(case, args.reps, args.timing_steps)
        results.append(r)
        print(f"{r['method']:>26}  ours~boat {_fmt(r['ours_vs_boat']['max'] if r['ours_vs_boat'] else None):>7}  "
              f"ours~ref {_fmt(r['ours_vs_reference']['max'] if r['ours_vs_reference'] else None):>7}  "
              f"boat~ref {_fmt(r['boat_vs_reference']['max'] if r['boat_vs_reference'] else None):>7}  "
              f"boat~as-read {_fmt(r['boat_vs_boat_as_read']['max'] if r['boat_vs_boat_as_read'] else None):>7}"
              + (f"  time x{r['timing']['ratio_boat_over_ours_median']:.2f}" if r.get("timing") else ""))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    with open(os.path.join(args.out, "COMPARE.md"), "w") as f:
        f.write(markdown(results, meta))
    print(f"wrote {os.path.normpath(os.path.join(args.out, 'compare.json'))} and COMPARE.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
