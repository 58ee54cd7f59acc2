"""``python -m engine.walkforward``: the walk-forward command line (:func:`engine.walkforward.cli.main`)."""

import sys

from engine.walkforward.cli import main

if __name__ == "__main__":
    sys.exit(main())
