"""Random strongly convex quadratic bilevel problems with closed forms (shared by the core tests)."""
import torch


def make_quadratic(n_x, n_y, seed, dtype=torch.float64):
    """A random strongly convex quadratic bilevel problem with closed forms.

    f(x, y) = 1/2 y'Hy - y'Bx - c'y,  F(x, y) = 1/2 ||y - a||^2 + lam/2 ||x||^2 + x'Ey.
    """
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    A = r(n_y, n_y)
    H = A @ A.T / n_y + 0.5 * torch.eye(n_y, dtype=dtype)
    B, c, a, E = r(n_y, n_x), r(n_y), r(n_y), 0.3 * r(n_x, n_y)
    lam = 0.1

    def lower(x, y):
        return 0.5 * y @ H @ y - y @ (B @ x) - c @ y

    def upper(x, y):
        return 0.5 * ((y - a) ** 2).sum() + 0.5 * lam * (x ** 2).sum() + x @ E @ y

    return dict(H=H, B=B, c=c, a=a, E=E, lam=lam, lower=lower, upper=upper,
                x=r(n_x), y0=r(n_y), lr=float(1.0 / torch.linalg.eigvalsh(H).max()))


def ift_closed_form(q):
    """Implicit-function-theorem hypergradient grad phi(x) of a problem from :func:`make_quadratic`."""
    H, B, c, x = q["H"], q["B"], q["c"], q["x"]
    y = torch.linalg.solve(H, B @ x + c)
    gy = (y - q["a"]) + q["E"].T @ x
    return q["lam"] * x + q["E"] @ y + B.T @ torch.linalg.solve(H, gy)
