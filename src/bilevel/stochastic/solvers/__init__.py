"""The 14 stochastic bilevel solvers, one module each (``build(ctx, inner_lr, outer_lr, *, options) -> Solver``)."""
