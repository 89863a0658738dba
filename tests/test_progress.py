"""The stages' progress bar: shown on a terminal, quiet in logs and when a config turns it off."""

import io
import sys

from msenc_lib.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def drawn(monkeypatch, stream, enabled=True) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    for _ in progress_bar(range(3), 3, "cells", enabled):
        pass
    return stream.getvalue()


def test_a_terminal_sees_the_bar(monkeypatch):
    assert "cells" in drawn(monkeypatch, Terminal())


def test_quiet_when_stderr_is_not_a_terminal_or_the_config_says_so(monkeypatch):
    assert drawn(monkeypatch, io.StringIO()) == ""
    assert drawn(monkeypatch, Terminal(), enabled=False) == ""
