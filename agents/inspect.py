"""``python -m agents.inspect``: an agent's model card (:func:`agents.artifact.inspect.main`)."""

import os
import sys

from agents.artifact.inspect import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the output was piped into a command that stopped reading (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)
