"""``python -m agents.inspect``: an agent's model card (:func:`agents.artifact.inspect.main`)."""

import sys

from agents.artifact.inspect import main

if __name__ == "__main__":
    sys.exit(main())
