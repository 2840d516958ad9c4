"""``python -m hippogan.pipeline``: the hippogan command line."""

from hippogan.pipeline.cli import main

raise SystemExit(main())
