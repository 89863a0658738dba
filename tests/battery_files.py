"""Files built here to the real layouts of the public battery datasets and cycler exports (never downloaded).

* BatteryML ``preprocess`` output: ``<cell_id>.pkl`` = ``BatteryData.to_dict()`` (plain dict; per-point values as
  lists, numpy float64 scalars where the writers leave them, e.g. MATR's ``internal_resistance_in_ohm``);
  BatteryML's MATR keeps the raw time in minutes within each cycle and stores 2-step SOC ends in percent.
* BatteryLife: the same dict plus ``SOC_interval``; time in seconds, cumulative over the cell; life labels in
  ``Life labels/<DATASET>_labels.json`` keyed by ``<cell_id>.pkl``.
* An Arbin MITS Pro CSV export (``Test_Time(s)``-style headers) and its column mapping.
* TRI's Arbin CSV as beep reads it (``Data_Point,Test_Time,DateTime,...``), and its ``_Metadata.csv``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

PROTOCOL_KEYS = ["rate_in_C", "current_in_A", "voltage_in_V", "power_in_W", "start_voltage_in_V", "start_soc",
                 "end_voltage_in_V", "end_soc"]
CYCLE_KEYS = ["cycle_number", "current_in_A", "voltage_in_V", "charge_capacity_in_Ah", "discharge_capacity_in_Ah",
              "time_in_s", "temperature_in_C", "internal_resistance_in_ohm"]


def protocol(**values) -> dict:
    return {k: values.get(k) for k in PROTOCOL_KEYS}


def cycle_points(rng: np.random.Generator, n: int, nominal: float) -> dict[str, np.ndarray]:
    """One charge/discharge cycle: charge at +, discharge at - current, capacities reset per cycle."""
    half = n // 2
    current = np.concatenate([np.full(half, 3.6 * nominal), np.full(n - half, -4.0 * nominal)])
    qc = np.concatenate([np.linspace(0, nominal, half), np.full(n - half, nominal)])
    qd = np.concatenate([np.zeros(half), np.linspace(0, nominal * rng.uniform(0.9, 1.0), n - half)])
    voltage = np.concatenate([np.linspace(2.0, 3.6, half), np.linspace(3.6, 2.0, n - half)])
    return {"current": current, "qc": qc, "qd": qd, "voltage": voltage,
            "temperature": 30 + rng.uniform(0, 5, n), "minutes": np.linspace(0, 60, n)}


def batteryml_cell(cell_id: str, n_cycles: int = 4, rows: int = 12, flavour: str = "batteryml", seed: int = 0,
                   nominal: float = 1.1, cathode: str = "LFP", temperature: bool = True,
                   charge_protocol: list | None = None, discharge_protocol: list | None = None) -> dict:
    """``BatteryData.to_dict()`` of one cell, in the key order BatteryML writes (flavour batteryml|batterylife)."""
    rng = np.random.default_rng(seed)
    matr = cell_id.startswith("MATR_")
    cycles = []
    elapsed = 0.0
    for number in range(1, n_cycles + 1):  # MATR's cycle 0 is never stored
        p = cycle_points(rng, rows + number, nominal or 1.1)
        if flavour == "batterylife":
            time = list(p["minutes"] * 60 + elapsed)  # seconds, cumulative; numpy float64 elements
            elapsed = float(time[-1])
        else:
            time = (p["minutes"] if matr else p["minutes"] * 60).tolist()  # BatteryML MATR: minutes
        cycle = {
            "cycle_number": number,
            "current_in_A": p["current"].tolist(),
            "voltage_in_V": p["voltage"].tolist(),
            "charge_capacity_in_Ah": p["qc"].tolist(),
            "discharge_capacity_in_Ah": p["qd"].tolist(),
            "time_in_s": time,
            "temperature_in_C": p["temperature"].tolist() if temperature else None,
            "internal_resistance_in_ohm": np.float64(0.016 + 0.0001 * number) if matr else None,
        }
        if matr:
            cycle["Qdlin"] = rng.uniform(0, 1.1, 1000).tolist()
        cycles.append(cycle)
    cell = {
        "cell_id": cell_id, "cycle_data": cycles, "form_factor": "cylindrical_18650", "anode_material": "graphite",
        "cathode_material": cathode, "electrolyte_material": None, "nominal_capacity_in_Ah": nominal,
        "depth_of_charge": 1.0, "depth_of_discharge": 1.0, "already_spent_cycles": 0,
        "max_voltage_limit_in_V": 3.6 if flavour == "batterylife" else 3.5, "min_voltage_limit_in_V": 2.0,
        "max_current_limit_in_A": None, "min_current_limit_in_A": None, "reference": "built by msenc tests",
        "description": None,
        "charge_protocol": charge_protocol if charge_protocol is not None else [],
        "discharge_protocol": discharge_protocol if discharge_protocol is not None else [],
    }
    if flavour == "batterylife":
        cell["SOC_interval"] = [0, 1]
    return cell


def matr_protocols(flavour: str = "batteryml") -> tuple[list, list]:
    """BatteryML's MATR protocols of ``3.6C(80%)-3.6C``: the 2-step SOC written in percent (its bug)."""
    charge = [protocol(rate_in_C=3.6, start_soc=0.0, end_soc=80.0), protocol(rate_in_C=3.6, start_soc=80.0,
                                                                             end_soc=1.0)]
    return charge, [protocol(rate_in_C=4.0, start_soc=1.0, end_soc=0.0)]


def hust_protocols() -> tuple[list, list]:
    """HUST: 5C to 80 % SOC, 1C to 3.6 V, then CV; discharge in windows of a per-cell table."""
    charge = [protocol(rate_in_C=5.0, start_soc=0.0, end_soc=0.8), protocol(rate_in_C=1.0, start_soc=0.8,
                                                                           end_voltage_in_V=3.6),
              protocol(voltage_in_V=3.6)]
    discharge = [protocol(rate_in_C=5.0, start_soc=1.0, end_soc=0.6), protocol(rate_in_C=1.0, start_soc=0.6,
                                                                              end_soc=0.0)]
    return charge, discharge


def write_cell(folder: Path, cell: dict, numpy1: bool = False) -> Path:
    """``<folder>/<cell_id>.pkl`` as BatteryML's ``dump`` writes it (default protocol); ``numpy1``: the numpy
    globals spelled as numpy 1.x writes them (``numpy.core.multiarray``), as BatteryML/BatteryLife files are."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cell['cell_id']}.pkl"
    if numpy1:  # protocol 0 names globals as text lines: respell numpy 2's module as numpy 1's
        data = pickle.dumps(cell, protocol=0).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    else:
        data = pickle.dumps(cell, protocol=4)
    path.write_bytes(data)
    return path


def write_labels(folder: Path, dataset: str, labels: dict[str, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset}_labels.json"
    path.write_text(json.dumps({f"{k}.pkl": v for k, v in labels.items()}))
    return path


# ------------------------------------------------------------------------------------ Arbin exports
ARBIN_MITS_HEADER = ["Data_Point", "Date_Time", "Test_Time(s)", "Step_Time(s)", "Cycle_Index", "Step_Index",
                     "Current(A)", "Voltage(V)", "Charge_Capacity(Ah)", "Discharge_Capacity(Ah)",
                     "Charge_Energy(Wh)", "Discharge_Energy(Wh)", "dV/dt(V/s)", "Internal_Resistance(Ohm)",
                     "Aux_Temperature_1(C)"]
ARBIN_MAPPING = """\
format: msenc-column-mapping
name: arbin-mits-pro
cell_key: file
columns:
  Cycle_Index: cycle_number
  Test_Time(s): {to: time, unit: s}
  Current(A): {to: current, unit: A}
  Voltage(V): voltage
  Charge_Capacity(Ah): {to: charge_capacity, unit: Ah}
  Discharge_Capacity(Ah): {to: discharge_capacity, unit: Ah}
  Aux_Temperature_1(C): {to: temperature, unit: degC}
  Internal_Resistance(Ohm): {to: internal_resistance, unit: ohm}
step_column: Step_Index
metadata: {dataset: my-lab, chemistry: LFP, nominal_capacity: 1.1, form_factor: cylindrical_18650,
           ambient_temperature: 30}
"""


def arbin_rows(n_cycles: int = 3, rows: int = 10, seed: int = 0) -> list[list]:
    """Rows of an Arbin export: cycle 1.., steps 1 (rest) 2 (charge) 3 (discharge), test time in s."""
    rng = np.random.default_rng(seed)
    out, point, t = [], 0, 0.0
    for cycle in range(1, n_cycles + 1):
        p = cycle_points(rng, rows, 1.1)
        for i in range(rows):
            point += 1
            t += 30.0
            step = 1 if i == 0 else (2 if p["current"][i] > 0 else 3)
            current = 0.0 if step == 1 else p["current"][i]
            out.append([point, f"2024-01-0{cycle} 10:{i:02d}:00", round(t, 4), 30.0 * i, cycle, step,
                        round(current, 6), round(p["voltage"][i], 6), round(p["qc"][i], 6), round(p["qd"][i], 6),
                        0.0, 0.0, 0.0, 0.021, round(p["temperature"][i], 3)])
    return out


def write_arbin_mits(path: Path, rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(ARBIN_MITS_HEADER)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


TRI_ARBIN_HEADER = ["Data_Point", "Test_Time", "DateTime", "Step_Time", "Step_Index", "Cycle_Index", "Current",
                    "Voltage", "Charge_Capacity", "Discharge_Capacity", "Charge_Energy", "Discharge_Energy", "dV/dt",
                    "Internal_Resistance", "Temperature"]


def write_tri_arbin(path: Path, n_cycles: int = 3, rows: int = 10, seed: int = 0) -> Path:
    """TRI's Arbin CSV (beep's ArbinDatapath layout: the first column is the row index = Data_Point)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(TRI_ARBIN_HEADER)]
    for r in arbin_rows(n_cycles, rows, seed):
        point, _, t, step_t, cycle, step, cur, volt, qc, qd, ec, ed, dvdt, ir, temp = r
        lines.append(",".join(str(v) for v in [point - 1, t, 1494645243.4715 + t, step_t, float(step), float(cycle),
                                               cur, volt, qc, qd, ec, ed, dvdt, ir, temp]))
    path.write_text("\n".join(lines) + "\n")
    return path


BATTERY_ARCHIVE_HEADER = ["Date_Time", "Test_Time (s)", "Cycle_Index", "Current (A)", "Voltage (V)",
                          "Charge_Capacity (Ah)", "Discharge_Capacity (Ah)", "Charge_Energy (Wh)",
                          "Discharge_Energy (Wh)", "Environment_Temperature (C)", "Cell_Temperature (C)"]


def write_battery_archive(path: Path, n_cycles: int = 3, rows: int = 10, seed: int = 0) -> Path:
    """A Battery Archive ``<cell id>_timeseries.csv`` (SNL, HNEI, UL-PUR, MICH publish this layout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(BATTERY_ARCHIVE_HEADER)]
    for r in arbin_rows(n_cycles, rows, seed):
        _, date, t, _, cycle, _, cur, volt, qc, qd, ec, ed, _, _, temp = r
        lines.append(",".join(str(v) for v in [date + ".000000", t, cycle, cur, volt, qc, qd, ec, ed, 25.0, temp]))
    path.write_text("\n".join(lines) + "\n")
    return path


MACCOR_HEADER = (["Rec#", "Cyc#", "Step", "Test (Sec)", "Step (Sec)", "Amp-hr", "Watt-hr", "Amps", "Volts", "State", "ES",
                  "DPt Time", "Loop1", "Loop2", "Loop3", "Loop4", "ACImp/Ohms", "DCIR/Ohms", "WF Chg Cap",
                  "WF Dis Cap", "WF Chg E", "WF Dis E", "Range"] + [f"VAR{i}" for i in range(1, 16)])


def write_maccor(path: Path, n_cycles: int = 3, rows_per_step: int = 4) -> Path:
    """A Maccor text export (tab-separated; line 1 the test's metadata, line 2 the header; ``Amp-hr`` restarts
    every step, ``State`` R/C/D, ``ES`` 133 at a step's end; the extension ``.0NN`` is the channel)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line1 = ("Today's Date 10/10/2019  Date of Test:\t10/10/2019\t Filename:\tC:\\Data\\" + path.name +
             " Procedure:\tPredictionDiagnostics_000151.000\tComment/Barcode: 00001E")
    out, rec, t = [line1, "\t".join(MACCOR_HEADER)], 0, 0.0
    for cycle in range(1, n_cycles + 1):
        for step, state, amps in [(1, "R", 0.0), (2, "C", 1.1), (3, "D", -1.1)]:
            for i in range(rows_per_step):
                rec, t = rec + 1, t + 10
                ah = 0.0 if state == "R" else 0.01 * (i + 1)
                row = [rec, cycle, step, f"{t:.4f}", f"{10 * (i + 1):.4f}", f"{ah:.10f}", f"{ah * 3.3:.10f}",
                       f"{amps:.10f}", f"{3.0 + 0.1 * i:.8f}", state, 133 if i == rows_per_step - 1 else 0,
                       f"10/21/2019 23:{rec // 60:02d}:{rec % 60:02d}", 0, 0, 0, 0, "0.00000", "0.00000", "N/A",
                       "N/A", "N/A", "N/A", 1] + ["0.00000"] * 15
                out.append("\t".join(map(str, row)))
    path.write_text("\n".join(out) + "\n")
    return path
