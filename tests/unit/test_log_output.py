"""Output to a file (a log, CI, nohup): evaluate's progress is log lines, not a redrawn bar, and the
libraries' own bars (transformers loading and writing weights, datasets reading a CSV) are off."""

from __future__ import annotations

import io
import sys


def test_evaluate_progress_is_log_lines_when_stderr_is_not_a_terminal(caplog, monkeypatch):
    from waltzlit.evaluation import runner

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with caplog.at_level("INFO", logger="waltzlit.evaluation.runner"), runner._progress(10, enabled=True) as bar:
        bar.set_description("evaluate [alone]")
        bar.update(5)
        bar.set_description("evaluate [waltzrl]")
        bar.update(5)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == [
        "evaluate [alone]: 0/10 prompts", "evaluate [waltzrl]: 5/10 prompts", "evaluate [waltzrl]: 10/10 prompts"]
    assert "\r" not in sys.stderr.getvalue()


def test_library_bars_are_off_when_stderr_is_not_a_terminal(monkeypatch):
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as transformers_logging

    from waltzlit.cli_errors import quiet_library_bars

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    try:
        quiet_library_bars()
        assert not transformers_logging.is_progress_bar_enabled()
        assert not datasets_logging.is_progress_bar_enabled()
    finally:
        transformers_logging.enable_progress_bar()
        datasets_logging.enable_progress_bar()
