"""``python -m agents.train``: the training command line (:func:`agents.training.cli.main`)."""

import sys

from agents.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
