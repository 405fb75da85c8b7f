"""``python -m experiments.plan [overrides] --target X [options]`` in a checkout: the same as
``jdo-plan`` (:mod:`jdo.train.plan`)."""

from jdo.train.plan import cli

if __name__ == "__main__":
    cli()
