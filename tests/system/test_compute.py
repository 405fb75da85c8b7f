"""Compute models: base seconds from a step profile."""

import pytest

import jdo.system as system
from jdo.checks import InvalidArgument


def test_fixed_measured_flops():
    profile = system.StepProfile(seconds=0.3, flops=2.0e9)
    assert system.fixed(0.25).base_seconds(profile) == 0.25
    assert system.fixed(0.25).base_seconds(None) == 0.25
    assert system.measured(2.0).base_seconds(profile) == pytest.approx(0.15, rel=1e-15)
    assert system.measured().base_seconds(profile) == 0.3
    assert system.flops(1e12, 0.5).base_seconds(profile) == pytest.approx(2e9 / 5e11, rel=1e-15)
    assert system.flops(4e12).efficiency == 0.5
    assert [m.needs for m in (system.fixed(0), system.measured(), system.flops(1))] == [
        None,
        "seconds",
        "flops",
    ]


@pytest.mark.parametrize(
    "model,missing", [(system.measured(), "seconds"), (system.flops(1e12), "flops")]
)
def test_a_missing_profile_field_names_compute(model, missing):
    with pytest.raises(InvalidArgument, match=f"StepProfile.{missing}") as e:
        model.base_seconds(system.StepProfile())
    assert e.value.argument == "compute"


@pytest.mark.parametrize(
    "make,argument",
    [
        (lambda: system.fixed(-1.0), "seconds"),
        (lambda: system.measured(0.0), "speed"),
        (lambda: system.flops(0.0), "peak_flops"),
        (lambda: system.flops(1e12, 0.0), "efficiency"),
        (lambda: system.flops(1e12, 1.5), "efficiency"),
    ],
)
def test_bad_values_name_the_argument(make, argument):
    with pytest.raises(InvalidArgument) as e:
        make()
    assert e.value.argument == argument
