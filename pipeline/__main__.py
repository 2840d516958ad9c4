"""``python -m hippogan.pipeline``: the hippogan command line."""

from .cli import main

raise SystemExit(main())
