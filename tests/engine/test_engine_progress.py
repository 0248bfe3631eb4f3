"""The engine's messages are log records: an application that configured raybench's loggers
gets them through its handlers (nothing on stdout), a plain verbose call shows them on
stdout, ``verbose=False`` shows nothing; no engine module but the CLI prints."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from raybench.engine import train
from raybench.engine.progress import format_eta
from tests.engine.test_engine_loop import toy_data, toy_trial

ENGINE = Path(__file__).resolve().parents[2] / "raybench" / "engine"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_progress_goes_to_the_applications_handlers_not_stdout(repo_root, tmp_path, capsys):
    trial = toy_trial(repo_root)
    raybench = logging.getLogger("raybench")
    handler, old_level = _Records(), raybench.level
    raybench.addHandler(handler)  # what `raybench run`'s console / a Ray worker does
    raybench.setLevel(logging.INFO)
    try:
        train(trial, tmp_path / "a", datasets=toy_data())
    finally:
        raybench.removeHandler(handler)
        raybench.setLevel(old_level)
    assert capsys.readouterr().out == ""
    prefix = f"[{trial.name}] "
    assert all(line.startswith(prefix) for line in handler.lines), handler.lines
    text = "\n".join(handler.lines)
    assert re.search(r"1 worker\(s\) x 1 x 4 images = global batch 4; device cpu; .* iterations 0\.\.8", text)
    assert re.search(r"iter 8/8  loss \d+\.\d{4} \(loss_mse \d+\.\d{3}, loss_l1 \d+\.\d{3}\)", text)
    assert f"{prefix}iter 8: val/count=5.00" in text and "checkpoints/iter_0000008" in text
    # Nothing configured: a verbose call prints the same lines, a quiet one nothing.
    train(trial, tmp_path / "b", datasets=toy_data())
    assert f"{prefix}iter 8/8  loss" in capsys.readouterr().out
    train(trial, tmp_path / "c", datasets=toy_data(), verbose=False)
    assert capsys.readouterr().out == ""
    assert not logging.getLogger("raybench.engine").handlers  # the run's console is gone again


def test_only_the_cli_prints():
    printing = [
        p.name for p in sorted(ENGINE.glob("*.py")) if p.name != "cli.py" and "print(" in p.read_text()
    ]
    assert printing == []


def test_format_eta():
    assert format_eta(3725.9) == "1:02:05" and format_eta(float("inf")) == "?"
