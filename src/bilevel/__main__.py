"""``python -m bilevel`` is the ``bilevel`` command."""
from .app.cli import main

raise SystemExit(main())
