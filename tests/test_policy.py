import numpy as np
import pytest

from msenc_lib.data.policy import format_policy, parse_charge_policy, policy_soc_rates, window_quartiles
from msenc_lib.errors import InputDataError


@pytest.mark.parametrize(
    "policy, expected",
    [
        # the examples of original-workflow.md §1.2
        ("3.6C(80%)-1.6C", [3.6, 3.6, 3.6, 2.0]),
        ("5.4C(40%)-3.6C", [5.4, 4.68, 3.6, 3.6]),
        ("5.4C(15%)-1.6C(75%)-2C", [3.88, 1.6, 1.6, 2.0]),
        # the secondary formats of §1.3
        ("4.8C", [4.8, 4.8, 4.8, 4.8]),
        # closed-loop CC1-CC4: 20 %-SOC windows over 0-80 %, then 1C (the fact sheet's worked example)
        ("4.8-5.2-5.2-4.16", [4.88, 5.2, 4.576, 1.632]),
        ("4-6-5.6-4.2", [4.4, 5.84, 4.76, 1.64]),
        ("4.8C-5.2C-5.2C-4.16C", [4.88, 5.2, 4.576, 1.632]),
        # decorations found in the pickles
        ("5C(67%)-4C-newstructure", [5.0, 5.0, 4.68, 4.0]),
        ("charge_policy_3.6C(80%)-3.6C", [3.6, 3.6, 3.6, 3.6]),
        (" 6C(20%) - 4.5C ", [5.7, 4.5, 4.5, 4.5]),
    ],
)
def test_quartiles(policy, expected):
    assert parse_charge_policy(policy) == pytest.approx(expected, abs=1e-12)


def test_quartiles_are_rounded_to_three_decimals():
    # 7C over 33% then 3C: Q2 = (8*7 + 17*3)/25 = 4.28, Q1 = 7, and a breakpoint like 33.3% is truncated
    q = parse_charge_policy("7C(33.3%)-3C")
    assert q == [7.0, 4.28, 3.0, 3.0]
    q = parse_charge_policy("1C(1%)-2C(2%)-3C")
    assert q == [round((1 + 2 + 23 * 3) / 25, 3), 3.0, 3.0, 3.0]


def test_window_quartiles_leave_uncovered_soc_unknown():
    assert window_quartiles([(0, 80, 5.0), (80, 100, 1.0)]) == [5.0, 5.0, 5.0, 1.8]
    q = window_quartiles([(0, 50, 2.0)])
    assert q[:2] == [2.0, 2.0] and np.isnan(q[2]) and np.isnan(q[3])


def test_soc_slots():
    slots = policy_soc_rates("5.4C(40%)-3.6C")
    assert slots.shape == (100,)
    assert np.all(slots[:40] == 5.4) and np.all(slots[40:] == 3.6)


@pytest.mark.parametrize("bad", ["", "fast", "3.6C(80%)", "3.6C(80)-2C", "3.6C(90%)-2C(50%)-1C", "1-2-3", "1-2-3-4-5",
                                 "4-6-x-4", "3.6C(120%)-1C", "3.6X(80%)-2C"])
def test_bad_policies_name_the_policy(bad):
    with pytest.raises(InputDataError) as e:
        parse_charge_policy(bad)
    assert repr(bad) in str(e.value) or repr(bad.replace(" ", "")) in str(e.value)


def test_format_roundtrip():
    text = format_policy([(5.4, 40)], 3.6)
    assert text == "5.4C(40%)-3.6C"
    assert parse_charge_policy(text) == [5.4, 4.68, 3.6, 3.6]
    assert format_policy([(6, 20), (4.8, 60)], 4) == "6C(20%)-4.8C(60%)-4C"
