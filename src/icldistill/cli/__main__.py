"""``python -m icldistill.cli``: the same as the ``icldistill`` console script."""

from icldistill.cli.app import main

raise SystemExit(main())
