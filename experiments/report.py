"""``python -m experiments.report DIR [DIR ...]`` in a checkout: the same as ``jdo-report``."""

import sys

from jdo.train.report import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m experiments.report"))
