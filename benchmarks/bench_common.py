"""Helpers shared by the benchmark scripts: peak-RSS sampling, CPU usage, step-time summaries, machine facts."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

# environment variables that change CPU timings; every report records the ones that are set
TIMING_ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "LD_PRELOAD", "THP_MEM_ALLOC_ENABLE",
                   "GLIBC_TUNABLES", "MALLOC_CONF", "KMP_AFFINITY", "OMP_PROC_BIND")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def maxrss_mib() -> float:
    """This process's exact peak RSS so far (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakRss:
    """Context manager sampling this process's RSS every 10 ms; ``peak`` is the largest seen (MiB)."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, rss_mib())

    def __enter__(self) -> "PeakRss":
        self.peak = rss_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


class CpuUsage:
    """User/system CPU seconds and minor page faults between ``start()`` and ``per_step(n)``: unlike wall time,
    hardly changed by other load on a shared machine."""

    def __init__(self) -> None:
        self.start()

    @staticmethod
    def _now() -> tuple[float, float, int]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime, r.ru_stime, r.ru_minflt

    def start(self) -> None:
        self._t0 = self._now()

    def per_step(self, steps: int) -> dict:
        user, system, faults = (now - then for now, then in zip(self._now(), self._t0))
        steps = max(steps, 1)
        return {"cpu_user_s_per_step": round(user / steps, 3), "cpu_sys_s_per_step": round(system / steps, 3),
                "minor_faults_per_step": int(faults / steps)}


def timing_summary(times: list[float], tokens_per_step: int) -> dict:
    """Step times and the throughputs from their mean, median and best."""
    median = statistics.median(times)
    return {"step_s": [round(t, 4) for t in times], "step_s_median": round(median, 4),
            "step_s_min": round(min(times), 4), "tokens_per_step": tokens_per_step,
            "tokens_per_s": round(tokens_per_step / statistics.fmean(times), 1),
            "tokens_per_s_median": round(tokens_per_step / median, 1),
            "tokens_per_s_best": round(tokens_per_step / min(times), 1)}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def mem_available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def machine() -> dict:
    """The CPU (model, the flags that decide matmul/attention speed: AVX-512, AMX, AVX512-BF16...), memory, load."""
    from msenc_lib.model.hardware import native_bf16, performance_flags

    return {"cpu": cpu_name(), "cpu_flags": performance_flags(), "cpu_native_bf16": native_bf16("cpu"),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "mem_available_gib": round(mem_available_gib(), 1), "load_average": [round(x, 2) for x in os.getloadavg()]}


def timing_env(env: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    return {k: env[k] for k in TIMING_ENV_KEYS if k in env}


def write_json(path: str | Path, report: dict) -> None:
    """Write atomically (a partial report is never left half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


def log(name: str, msg: str) -> None:
    print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
