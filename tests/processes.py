"""Local processes for the tests that start several ranks of one job: a free loopback port, and running the
ranks to completion."""

from __future__ import annotations

import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_to_completion(commands: list[tuple[list[str], dict]], timeout: float = 400) -> list[tuple[str, str]]:
    """Start every (command, env) at once (the ranks of one job), wait for all; each must exit 0.
    Returns (stdout, stderr) per command."""
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd, env in commands]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    return outputs
