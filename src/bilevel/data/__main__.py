"""``python -m bilevel.data download NAME [--dest DIR] [--base-url URL]``."""

from .cli import main

raise SystemExit(main())
