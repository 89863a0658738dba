"""The unified table: beep-data-utils' "unified CSV" schema, one row per measured time step.

Column order is exact (original-workflow.md §1.2). Units are the source's (Severson: time in minutes,
capacities in Ah, temperature in °C; see msenc_lib/data/README.md per format); capacities are divided by the
nominal capacity only on request (ingest ``--normalize-capacity``). Per-cell metadata columns follow the 16
(:data:`METADATA_COLUMNS`, null where the source does not know), then any other extra columns.
"""

UNIFIED_COLUMNS: list[str] = [
    "cell_key",            # cell id, e.g. b1c0
    "cycle_number",        # 0-based cycle index (int; float in some other datasets)
    "time",                # time within the cycle
    "cycle_life",          # cycles to 80% capacity (int), after the batch-2 carry-over merge
    "discharge_policy",    # constant 400 for the Severson data (int)
    "current",             # C-rate / A as in the source
    "voltage",             # V
    "charge_capacity",     # Qc, Ah
    "discharge_capacity",  # Qd, Ah
    "temperature",         # °C
    "batch_number",        # 1..3 (int)
    "discharge_dQdV",      # dQ/dV on the source's 1000-point voltage grid; empty past its end
    "charge_policy_Q1",    # mean C-rate over SOC 0-25%
    "charge_policy_Q2",    # ... 25-50%
    "charge_policy_Q3",    # ... 50-75%
    "charge_policy_Q4",    # ... 75-100%
]

ID_COLUMN = "cell_key"
CYCLE_COLUMN = "cycle_number"
TIME_COLUMN = "time"

# Without these a table cannot be used; the others are reported when absent (other chemistries lack some).
REQUIRED_COLUMNS: list[str] = [
    "cell_key", "cycle_number", "time", "current", "voltage",
    "charge_capacity", "discharge_capacity", "temperature",
]
# Required columns whose values may be empty where the source did not measure them (kept as null, counted).
UNMEASURED_OK: list[str] = ["temperature"]
OPTIONAL_COLUMNS: list[str] = [c for c in UNIFIED_COLUMNS if c not in REQUIRED_COLUMNS]

# Integer columns of the original layout (cycle_number may also be float: other datasets).
INTEGER_COLUMNS: list[str] = ["cycle_number", "cycle_life", "discharge_policy", "batch_number"]
# Columns that may legitimately be empty (null) in real files.
NULLABLE_COLUMNS: list[str] = ["discharge_dQdV"]
CHARGE_POLICY_COLUMNS: list[str] = [f"charge_policy_Q{i}" for i in range(1, 5)]
# Float columns (always stored as float64).
FLOAT_COLUMNS: list[str] = [c for c in UNIFIED_COLUMNS if c not in INTEGER_COLUMNS and c != ID_COLUMN]
NUMERIC_COLUMNS: list[str] = [c for c in UNIFIED_COLUMNS if c != ID_COLUMN]
# Optional extra column (not in the 16): per-cycle internal resistance, written by the Severson readers on
# request and used by the "full" Severson feature set.
IR_COLUMN = "internal_resistance"

# Per-cell metadata, appended after the 16 columns in this order (constant within a cell; null = unknown).
METADATA_COLUMNS: list[str] = [
    "dataset",              # source dataset: MATR, HUST, CALCE, SNL, ... (a mapping or --metadata names others)
    "chemistry",            # cathode chemistry, e.g. LFP, NMC, NCA, LCO
    "nominal_capacity",     # Ah
    "form_factor",          # e.g. cylindrical_18650, pouch, prismatic
    "ambient_temperature",  # °C, the chamber / test temperature
]
METADATA_TEXT_COLUMNS: list[str] = ["dataset", "chemistry", "form_factor"]
METADATA_FLOAT_COLUMNS: list[str] = ["nominal_capacity", "ambient_temperature"]
CAPACITY_COLUMNS: list[str] = ["charge_capacity", "discharge_capacity"]


def canonical_order(columns: list[str]) -> list[str]:
    """The unified columns present, in canonical order, then the metadata columns present in theirs, then any
    other extra columns in their given order."""
    present = set(columns)
    known = UNIFIED_COLUMNS + METADATA_COLUMNS
    return [c for c in known if c in present] + [c for c in columns if c not in known]
