"""Comparison of tensors or dicts of tensors, shared by the tests."""


def assert_tree_close(a, b, tol):
    """``max |a - b| <= tol * max(1, max |b|)``, leaf by leaf for dicts (which must have the same keys)."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            assert_tree_close(a[k], b[k], tol)
        return
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale, (float((a - b).abs().max()), scale)
