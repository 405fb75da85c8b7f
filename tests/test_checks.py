"""jdo.checks: one exception type per kind of mistake, naming the argument."""

import optax
import pytest

from jdo import checks


@pytest.mark.parametrize(
    "check,args,kind,message",
    [
        (
            checks.positive_int,
            ("n", 0),
            checks.InvalidArgument,
            "must be a positive integer, got 0",
        ),
        (checks.positive_int, ("n", True), checks.WrongType, "must be an integer, got True"),
        (checks.non_negative_int, ("k", -1), checks.InvalidArgument, "non-negative integer"),
        (checks.positive, ("lr", 0.0), checks.InvalidArgument, "must be a positive number, got 0.0"),
        (checks.positive, ("lr", "a"), checks.WrongType, "must be a number, got 'a'"),
        (checks.probability, ("p", 1.5), checks.InvalidArgument, "must be in [0, 1], got 1.5"),
        (
            checks.probability,
            (
                "p",
                0,
            ),
            checks.InvalidArgument,
            None,
        ),
        (checks.number, ("x", float("nan")), checks.InvalidArgument, "got nan"),
        (checks.one_of, ("mode", "c", ("a", "b")), checks.InvalidArgument, "one of 'a', 'b'"),
        (checks.int_sequence, ("hidden", 128), checks.WrongType, "a list of integers, got 128"),
        (checks.int_sequence, ("hidden", [8, 0]), checks.InvalidArgument, "integers >= 1"),
        (checks.optimizer, ("optimizer", "adam"), checks.WrongType, "optax.GradientTransformation"),
        (checks.function, ("loss_fn", 3), checks.WrongType, "must be callable"),
    ],
)
def test_a_bad_argument_raises_its_kind_naming_the_argument(check, args, kind, message):
    if message is None:  # probability(0) is allowed unless allow_zero=False
        assert check(*args) == 0.0
        with pytest.raises(kind):
            check(*args, allow_zero=False)
        return
    with pytest.raises(kind) as info:
        check(*args)
    assert info.value.argument == args[0]
    assert message in info.value.message
    assert str(info.value).startswith(f"{args[0]} ")
    # the kinds are the standard ones, so `except ValueError` / `except TypeError` still work
    assert isinstance(info.value, ValueError if kind is checks.InvalidArgument else TypeError)


def test_good_arguments_come_back_normalised():
    assert checks.positive_int("n", 3) == 3
    assert checks.int_sequence("hidden", [64, 64]) == (64, 64)
    assert checks.number("x", 2, low=0, high=2) == 2.0
    assert checks.optimizer("optimizer", optax.sgd(0.1)) is not None
