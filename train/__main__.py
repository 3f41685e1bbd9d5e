"""``python -m train``: see :mod:`train.cli`."""

import sys

try:  # Ctrl-C while Python imports torch is start-up too: one line, 130
    from train.cli import main
except KeyboardInterrupt:
    print("error: interrupted by Ctrl-C", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
