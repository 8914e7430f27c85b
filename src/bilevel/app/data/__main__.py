"""``python -m bilevel.app.data download NAME [--dest DIR] [--base-url URL]``."""

from bilevel.app.data.cli import main

raise SystemExit(main())
