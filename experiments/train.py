"""``python -m experiments.train [overrides]`` in a checkout: the same as ``jdo-train``."""

from jdo.train.cli import cli

if __name__ == "__main__":
    cli()
