from __future__ import annotations

import logging
import re
import sys
import uuid
from types import SimpleNamespace

import pytest

from heron.utils import logger as logger_mod
from heron.utils.logger import (
    _log_api_usage,
    create_small_table,
    log_every_n,
    log_every_n_seconds,
    log_first_n,
    setup_logger,
)

PLAIN_LINE = re.compile(r"^\[\d\d/\d\d \d\d:\d\d:\d\d\] (?P<name>\S+) (?P<level>\w+): (?P<msg>.*)$")


@pytest.fixture
def logger_name():
    """A fresh logger name; its handlers are removed afterwards."""
    name = f"heron_test_{uuid.uuid4().hex[:8]}"
    yield name
    log = logging.getLogger(name)
    for h in list(log.handlers):
        log.removeHandler(h)


def _stdout_handlers(log: logging.Logger) -> list[logging.Handler]:
    return [h for h in log.handlers if getattr(h, "stream", None) is sys.stdout]


# ---------------------------------------------------------------- setup_logger


def test_setup_logger_writes_plain_lines_to_log_txt_in_directory(tmp_path, logger_name):
    out = tmp_path / "run"
    log = setup_logger(str(out), name=logger_name, configure_stdout=False)
    assert log is logging.getLogger(logger_name)
    assert log.level == logging.DEBUG
    assert log.propagate is False
    logging.getLogger(logger_name + ".engine").info("hello %d", 5)
    log.debug("details")
    for h in log.handlers:
        h.flush()
    lines = (out / "log.txt").read_text().splitlines()
    parsed = [PLAIN_LINE.match(line).groupdict() for line in lines]
    assert parsed == [
        {"name": logger_name + ".engine", "level": "INFO", "msg": "hello 5"},
        {"name": logger_name, "level": "DEBUG", "msg": "details"},
    ]


def test_setup_logger_accepts_a_file_path(tmp_path, logger_name):
    target = tmp_path / "nested" / "train.log"
    log = setup_logger(str(target), name=logger_name, configure_stdout=False)
    log.warning("careful")
    for h in log.handlers:
        h.flush()
    assert PLAIN_LINE.match(target.read_text().strip()).group("msg") == "careful"


def test_setup_logger_nonzero_rank_writes_rank_file_and_no_stdout(tmp_path, logger_name):
    log = setup_logger(str(tmp_path), distributed_rank=3, name=logger_name)
    assert _stdout_handlers(log) == []
    log.info("from rank 3")
    for h in log.handlers:
        h.flush()
    assert not (tmp_path / "log.txt").exists()
    assert "from rank 3" in (tmp_path / "log.txt.rank3").read_text()


def test_setup_logger_twice_adds_no_duplicate_handlers(tmp_path, logger_name):
    log = setup_logger(str(tmp_path), name=logger_name)
    assert len(log.handlers) == 2  # stdout + file
    setup_logger(str(tmp_path), name=logger_name)
    setup_logger(str(tmp_path / "log.txt"), name=logger_name)  # the same file, named directly
    assert len(log.handlers) == 2
    log.info("once")
    for h in log.handlers:
        h.flush()
    assert (tmp_path / "log.txt").read_text().count("once") == 1


def test_setup_logger_without_output_has_only_stdout(logger_name):
    log = setup_logger(name=logger_name)
    assert len(log.handlers) == 1
    assert len(_stdout_handlers(log)) == 1


def test_setup_logger_colored_console_abbreviates_name_and_flags_warnings(capsys, logger_name):
    log = setup_logger(name=logger_name, abbrev_name="ht")
    logging.getLogger(logger_name + ".data").info("loaded")
    log.warning("slow")
    log.error("broken")
    out = capsys.readouterr().out.splitlines()
    assert "\x1b[32m" in out[0]  # green header
    assert "ht.data]: " in out[0] and out[0].endswith("loaded")
    assert "WARNING" in out[1] and out[1].endswith("slow")
    assert "ERROR" in out[2] and out[2].endswith("broken")


def test_setup_logger_plain_console_when_color_false(capsys, logger_name):
    log = setup_logger(name=logger_name, color=False)
    log.info("plain")
    line = capsys.readouterr().out.strip()
    assert "\x1b[" not in line
    assert PLAIN_LINE.match(line).groupdict() == {
        "name": logger_name,
        "level": "INFO",
        "msg": "plain",
    }


def test_setup_logger_configure_stdout_false_and_propagation(logger_name):
    log = setup_logger(name=logger_name, configure_stdout=False, enable_propagation=True)
    assert log.handlers == []
    assert log.propagate is True


# ---------------------------------------------------------------- rate-limited logging


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_log_first_n_logs_first_n_calls_from_a_line(caplog):
    caplog.set_level(logging.INFO)
    for i in range(5):
        log_first_n(logging.INFO, f"first-n {i}", n=2)
    assert _messages(caplog) == ["first-n 0", "first-n 1"]
    assert caplog.records[0].name == __name__  # default logger: the calling module's


def test_log_first_n_with_message_key_counts_across_lines(caplog):
    caplog.set_level(logging.INFO)
    msg = f"same text {uuid.uuid4().hex}"
    log_first_n(logging.INFO, msg, key="message")
    log_first_n(logging.INFO, msg, key="message")  # another line, same text: suppressed
    assert _messages(caplog) == [msg]


def test_log_first_n_with_caller_and_message_key_counts_each_message(caplog):
    caplog.set_level(logging.INFO)
    for text in ["a", "b", "a", "b", "a"]:
        log_first_n(logging.INFO, text, key=("caller", "message"))
    assert _messages(caplog) == ["a", "b"]


def test_log_first_n_uses_named_logger(caplog):
    caplog.set_level(logging.INFO)
    log_first_n(logging.WARNING, "named", name="heron.test_named")
    assert caplog.records[0].name == "heron.test_named"
    assert caplog.records[0].levelno == logging.WARNING


@pytest.mark.parametrize("key", ["line", (), ("caller", "other")])
def test_log_first_n_rejects_unknown_key(key):
    with pytest.raises(ValueError, match="key must be 'caller', 'message' or both"):
        log_first_n(logging.INFO, "x", key=key)


def test_log_every_n_logs_calls_1_n_plus_1_and_so_on(caplog):
    caplog.set_level(logging.INFO)
    for i in range(7):
        log_every_n(logging.INFO, f"every {i}", n=3)
    # calls 1, 4, 7 (i = 0, 3, 6)
    assert _messages(caplog) == ["every 0", "every 3", "every 6"]


def test_log_every_n_with_n_1_logs_every_call_and_rejects_zero(caplog):
    caplog.set_level(logging.INFO)
    for i in range(3):
        log_every_n(logging.INFO, f"each {i}")
    assert _messages(caplog) == ["each 0", "each 1", "each 2"]
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        log_every_n(logging.INFO, "x", n=0)


def test_log_every_n_seconds_waits_n_seconds_between_logs(caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    clock = iter([100.0, 100.5, 101.0, 101.2, 102.5])
    # replace the module's view of `time` only; logging itself keeps the real clock
    monkeypatch.setattr(logger_mod, "time", SimpleNamespace(time=lambda: next(clock)))
    for i in range(5):
        log_every_n_seconds(logging.INFO, f"timed {i}", n=1)
    # 100.0 logs; 100.5 is 0.5 s later: skip; 101.0 is 1.0 s after 100.0: log;
    # 101.2 is 0.2 s after: skip; 102.5 is 1.5 s after 101.0: log
    assert _messages(caplog) == ["timed 0", "timed 2", "timed 4"]


# ---------------------------------------------------------------- tables


def test_create_small_table_formats_one_centered_row():
    table = create_small_table({"AP": 40.12345, "AP50": 60.0, "name": "x"})
    expected = (
        "|   AP   |  AP50  |  name  |\n|:------:|:------:|:------:|\n| 40.123 | 60.000 |   x    |"
    )
    assert table == expected


def test_create_small_table_single_entry_and_empty():
    assert create_small_table({"k": 1}).splitlines()[2] == "|  1  |"
    assert create_small_table({}) == ""


def test_log_api_usage_accepts_an_identifier():
    _log_api_usage("modeling.meta_arch.test")  # forwards to torch; must not raise


def test_console_handler_follows_stdout_redirections():
    import contextlib
    import io
    import uuid

    name = f"heron_test_redirect_{uuid.uuid4().hex[:8]}"
    logger = setup_logger(name=name, color=False)
    first, second = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(first):
        logger.info("to the first")
    first.close()  # a stream that is gone must not be written to again
    with contextlib.redirect_stdout(second):
        logger.info("to the second")
    assert "to the second" in second.getvalue() and "to the first" not in second.getvalue()
