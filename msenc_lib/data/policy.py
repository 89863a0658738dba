"""Charge policy strings -> four quartile C-rates (``charge_policy_Q1..Q4``), the beep-data-utils rule.

Formats (original-workflow.md §1.2, §1.3):

* multi-step ``R1C(P1%)-R2C(P2%)-...-RnC``: rate ``Rk`` fills the SOC percent slots from the previous
  breakpoint up to ``Pk``; the last rate fills the rest of the 100 slots. Quartile k = mean of slots
  ``[25(k-1), 25k)``, rounded to 3 decimals. ``3.6C(80%)-1.6C`` -> ``[3.6, 3.6, 3.6, 2.0]``;
* a single rate ``4.8C`` -> four times 4.8;
* closed-loop policies ``CC1-CC2-CC3-CC4`` (Attia et al. 2020; MATR 2018-08-28 and later, e.g.
  ``4.8-5.2-5.2-4.16``): four 20 %-SOC windows covering 0-80 %, then 1C to 100 % (the CC-CV step every MATR
  cell ends its charge with). ``4.8-5.2-5.2-4.16`` -> ``[4.88, 5.2, 4.576, 1.632]``. (beep-data-utils read
  these four numbers as the quartiles themselves, which puts 80 % SOC at 100 % and drops the 1C tail.)

A ``charge_policy_`` prefix, a ``-newstructure`` suffix (Severson batch 3) and spaces are ignored.
:func:`window_quartiles` gives the quartiles of explicit SOC windows (BatteryML's charge protocols).
"""

from __future__ import annotations

import re

import numpy as np

from msenc_lib.errors import InputDataError

_STAGE = re.compile(r"^(?P<rate>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)C\((?P<pct>[0-9]*\.?[0-9]+)%\)$")
_RATE = re.compile(r"^(?P<rate>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)C?$")


def normalize_policy(policy: str) -> str:
    return str(policy).replace("charge_policy_", "").replace("-newstructure", "").replace(" ", "").strip()


def policy_soc_rates(policy: str) -> np.ndarray:
    """The C-rate of each of the 100 SOC percent slots of a multi-step (or single-rate) policy."""
    text = normalize_policy(policy)
    stages = text.split("-")
    if not text or any(not s for s in stages):
        raise InputDataError(f"charge policy {policy!r}: empty stage")
    slots = np.zeros(100)
    start = 0
    for stage in stages[:-1]:
        m = _STAGE.match(stage)
        if not m:
            raise InputDataError(
                f"charge policy {policy!r}: stage {stage!r} is not of the form '<rate>C(<percent>%)'"
            )
        end = int(float(m["pct"]))
        if not start <= end <= 100:
            raise InputDataError(
                f"charge policy {policy!r}: SOC breakpoint {m['pct']}% must lie between the previous "
                f"breakpoint ({start}%) and 100%"
            )
        slots[start:end] = float(m["rate"])
        start = end
    m = _RATE.match(stages[-1])
    if not m or not stages[-1].endswith("C"):
        raise InputDataError(f"charge policy {policy!r}: final stage {stages[-1]!r} is not of the form '<rate>C'")
    slots[start:] = float(m["rate"])
    return slots


CLOSED_LOOP_WINDOWS = 4  # CC1..CC4, 20 % SOC each
CLOSED_LOOP_WINDOW_PCT = 20
TAIL_RATE = 1.0  # MATR cells charge 80-100 % SOC at 1C CC-CV


def quartiles_of_slots(slots: np.ndarray, num_quantiles: int = 4) -> list[float]:
    """Mean C-rate of each SOC quantile of 100 percent slots, rounded to 3 decimals (NaN where a slot is unknown)."""
    width = 100 // num_quantiles
    # np.round on the float64 mean, as the original (round() of a numpy scalar) does.
    return [float(np.round(np.mean(slots[k * width : (k + 1) * width]), 3)) for k in range(num_quantiles)]


def window_quartiles(windows: list[tuple[float, float, float]], num_quantiles: int = 4) -> list[float]:
    """Quartile C-rates of charge windows ``(start_pct, end_pct, rate)``; a quartile with SOC no window covers is
    NaN. Later windows overwrite earlier ones where they overlap."""
    slots = np.full(100, np.nan)
    for start, end, rate in windows:
        lo, hi = int(round(max(0.0, start))), int(round(min(100.0, end)))
        if hi > lo:
            slots[lo:hi] = rate
    return quartiles_of_slots(slots, num_quantiles)


def closed_loop_rates(policy: str) -> list[float] | None:
    """The four CC rates of a closed-loop policy ``CC1-CC2-CC3-CC4`` (module doc), or None for another format."""
    text = normalize_policy(policy)
    parts = text.split("-")
    if "(" in text or len(parts) < 2 or not all(_RATE.match(p) for p in parts):
        return None
    if len(parts) != CLOSED_LOOP_WINDOWS:
        raise InputDataError(f"charge policy {policy!r}: a closed-loop policy has {CLOSED_LOOP_WINDOWS} "
                             "dash-separated C-rates (CC1-CC2-CC3-CC4), or use '<rate>C(<pct>%)-...-<rate>C'")
    return [float(_RATE.match(p)["rate"]) for p in parts]


def parse_charge_policy(policy: str, num_quantiles: int = 4) -> list[float]:
    """Quartile C-rates of a charge policy string (see the module doc for the accepted formats).

    Raises :class:`InputDataError` (naming the policy) for a string that fits no format.
    """
    text = normalize_policy(policy)
    if "C" not in text and "-" in text and "(" not in text and not all(_RATE.match(p) for p in text.split("-")):
        raise InputDataError(f"charge policy {policy!r}: expected {CLOSED_LOOP_WINDOWS} dash-separated C-rates "
                             "or '<rate>C(<pct>%)-...-<rate>C'")
    rates = closed_loop_rates(text)
    if rates is not None:
        windows = [(CLOSED_LOOP_WINDOW_PCT * i, CLOSED_LOOP_WINDOW_PCT * (i + 1), r) for i, r in enumerate(rates)]
        return window_quartiles([*windows, (CLOSED_LOOP_WINDOW_PCT * len(rates), 100, TAIL_RATE)], num_quantiles)
    if "(" not in text and text.count("C") == 1 and text.endswith("C"):
        m = _RATE.match(text)
        if not m:
            raise InputDataError(f"charge policy {policy!r}: not a C-rate")
        return [float(m["rate"])] * num_quantiles
    return quartiles_of_slots(policy_soc_rates(policy), num_quantiles)


def format_policy(stages: list[tuple[float, float]], final_rate: float) -> str:
    """``[(5.4, 40)], 3.6`` -> ``'5.4C(40%)-3.6C'`` (the inverse of the multi-step format)."""
    parts = [f"{_num(rate)}C({_num(pct)}%)" for rate, pct in stages]
    parts.append(f"{_num(final_rate)}C")
    return "-".join(parts)


def _num(x: float) -> str:
    return f"{float(x):g}"
