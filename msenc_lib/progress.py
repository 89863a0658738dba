"""The stages' progress display: a tqdm bar on stderr, off when the stage's config says ``progress: false``
(the KFP components do) or stderr is not a terminal (logs, CI), gone when done."""

from __future__ import annotations

import sys
from typing import Any, Iterable


def progress_bar(iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 enabled: bool = True, unit: str = "cell", **kwargs: Any):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=None if enabled else True,
                dynamic_ncols=True, leave=False, **kwargs)
