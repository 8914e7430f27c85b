"""``python -m bilevel`` is the ``bilevel`` command."""
from .cli import main

raise SystemExit(main())
