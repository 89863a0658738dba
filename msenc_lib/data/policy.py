"""Charge policy strings -> four quartile C-rates (``charge_policy_Q1..Q4``), the beep-data-utils rule.

Formats (original-workflow.md §1.2, §1.3):

* multi-step ``R1C(P1%)-R2C(P2%)-...-RnC``: rate ``Rk`` fills the SOC percent slots from the previous
  breakpoint up to ``Pk``; the last rate fills the rest of the 100 slots. Quartile k = mean of slots
  ``[25(k-1), 25k)``, rounded to 3 decimals. ``3.6C(80%)-1.6C`` -> ``[3.6, 3.6, 3.6, 2.0]``;
* a single rate ``4.8C`` -> four times 4.8;
* direct quartiles ``4-6-5.6-4.2`` (closed-loop optimisation dataset) -> ``[4.0, 6.0, 5.6, 4.2]``.

A ``charge_policy_`` prefix, a ``-newstructure`` suffix (Severson batch 3) and spaces are ignored.
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


def parse_charge_policy(policy: str, num_quantiles: int = 4) -> list[float]:
    """Quartile C-rates of a charge policy string (see the module doc for the accepted formats).

    Raises :class:`InputDataError` (naming the policy) for a string that fits no format.
    """
    text = normalize_policy(policy)
    if "C" not in text and "-" in text:
        parts = text.split("-")
        if len(parts) == num_quantiles:
            try:
                return [float(p) for p in parts]
            except ValueError:
                pass
        raise InputDataError(
            f"charge policy {policy!r}: expected {num_quantiles} dash-separated C-rates "
            "or '<rate>C(<pct>%)-...-<rate>C'"
        )
    if "(" not in text and text.count("C") == 1 and text.endswith("C"):
        m = _RATE.match(text)
        if not m:
            raise InputDataError(f"charge policy {policy!r}: not a C-rate")
        return [float(m["rate"])] * num_quantiles
    slots = policy_soc_rates(policy)
    width = 100 // num_quantiles
    # np.round on the float64 mean, as the original (round() of a numpy scalar) does.
    return [float(np.round(np.mean(slots[k * width : (k + 1) * width]), 3)) for k in range(num_quantiles)]


def format_policy(stages: list[tuple[float, float]], final_rate: float) -> str:
    """``[(5.4, 40)], 3.6`` -> ``'5.4C(40%)-3.6C'`` (the inverse of the multi-step format)."""
    parts = [f"{_num(rate)}C({_num(pct)}%)" for rate, pct in stages]
    parts.append(f"{_num(final_rate)}C")
    return "-".join(parts)


def _num(x: float) -> str:
    return f"{float(x):g}"
