"""MkDocs hooks of the API site (``mkdocs.yml``: ``hooks``).

The docstrings cross-reference in Sphinx style (``:func:`bilevel.solve```), which mkdocstrings renders as the role
name followed by inline code; the role name is dropped so that the page shows just the name in code.
"""
import re

_ROLE = re.compile(r":(?:func|class|data|meth|mod|attr|exc|obj):(<code>)")


def on_page_content(html, **kwargs):
    return _ROLE.sub(r"\1", html)
