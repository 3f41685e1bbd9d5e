"""``python -m train``: see :mod:`train.cli`."""

from train.cli import main

raise SystemExit(main())
