"""``python -m experiments.launch`` in a checkout: the same as ``jdo-launch``."""

from jdo.train.launch import cli

if __name__ == "__main__":
    cli()
