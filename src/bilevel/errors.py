"""Exceptions raised by the core."""


class NonFiniteError(ValueError, FloatingPointError):
    """A NaN or inf appeared in an input, an inner iterate, an objective value or a hypergradient.

    It is both a :class:`ValueError` and a :class:`FloatingPointError`; the message says "nan" or "inf"
    and where (which input, which inner step).
    """
