"""Logging setup and rate-limited logging helpers, with Detectron2's names and behaviour.

``setup_logger`` configures a named logger once per process: colored console output on rank
0, and a plain-text log file per rank. ``log_first_n``, ``log_every_n`` and
``log_every_n_seconds`` limit how often a call site logs, keyed by the calling line.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import time
from collections import Counter
from typing import IO, Any

import torch
from tabulate import tabulate

__all__ = [
    "create_small_table",
    "log_every_n",
    "log_every_n_seconds",
    "log_first_n",
    "setup_logger",
]

_DATEFMT = "%m/%d %H:%M:%S"
_PLAIN_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"

# ANSI escape sequences for the console formatter (no third-party color package needed)
_GREEN = "\x1b[32m"
_RED_BLINK = "\x1b[31m\x1b[5m"
_RED_BLINK_UNDERLINE = "\x1b[31m\x1b[5m\x1b[4m"
_RESET = "\x1b[0m"

# Marks the handlers setup_logger adds, so a second call can recognise them.
_HANDLER_KEY_ATTR = "_heron_setup_logger_key"


class _ColorfulFormatter(logging.Formatter):
    """Console formatter: abbreviates the root logger name and flags warnings and errors."""

    def __init__(self, *args: Any, root_name: str, abbrev_name: str = "", **kwargs: Any) -> None:
        self._root_name = root_name + "."
        self._abbrev_name = abbrev_name + "." if abbrev_name else ""
        super().__init__(*args, **kwargs)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.name = record.name.replace(self._root_name, self._abbrev_name)
        log = super().formatMessage(record)
        if record.levelno == logging.WARNING:
            return f"{_RED_BLINK}WARNING{_RESET} {log}"
        if record.levelno >= logging.ERROR:
            return f"{_RED_BLINK_UNDERLINE}ERROR{_RESET} {log}"
        return log


def _has_handler(logger: logging.Logger, key: tuple[str, ...]) -> bool:
    return any(getattr(h, _HANDLER_KEY_ATTR, None) == key for h in logger.handlers)


def setup_logger(
    output: str | None = None,
    distributed_rank: int = 0,
    *,
    color: bool = True,
    name: str = "heron",
    abbrev_name: str | None = None,
    enable_propagation: bool = False,
    configure_stdout: bool = True,
) -> logging.Logger:
    """Configure the logger ``name`` at DEBUG level and return it.

    Calling it again with the same arguments adds no handler: each handler it adds is
    tagged with what it writes to (stdout, or a file path) and not added twice.

    Args:
        output: a directory (logs go to ``output/log.txt``) or a file ending in ``.txt`` or
            ``.log``; None for no file. Rank r > 0 writes to ``<file>.rank{r}``.
        distributed_rank: this process's rank; only rank 0 logs to stdout.
        color: use the colored console format.
        name: the logger's name.
        abbrev_name: what ``name`` is shortened to in console output; default ``name``.
        enable_propagation: pass records on to the parent loggers.
        configure_stdout: add the console handler (on rank 0).

    Returns:
        The configured ``logging.Logger``.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = enable_propagation
    if abbrev_name is None:
        abbrev_name = name

    plain_formatter = logging.Formatter(_PLAIN_FORMAT, datefmt=_DATEFMT)
    stdout_key = ("stdout",)
    if configure_stdout and distributed_rank == 0 and not _has_handler(logger, stdout_key):
        handler: logging.StreamHandler = _StdoutHandler()
        handler.setLevel(logging.DEBUG)
        if color:
            formatter: logging.Formatter = _ColorfulFormatter(
                f"{_GREEN}[%(asctime)s %(name)s]: {_RESET}%(message)s",
                datefmt=_DATEFMT,
                root_name=name,
                abbrev_name=str(abbrev_name),
            )
        else:
            formatter = plain_formatter
        handler.setFormatter(formatter)
        setattr(handler, _HANDLER_KEY_ATTR, stdout_key)
        logger.addHandler(handler)

    if output is not None:
        if output.endswith((".txt", ".log")):
            filename = output
        else:
            filename = os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        file_key = ("file", _normalize(filename))
        if not _has_handler(logger, file_key):
            handler = logging.StreamHandler(_cached_log_stream(file_key[1]))
            handler.setLevel(logging.DEBUG)
            handler.setFormatter(plain_formatter)
            setattr(handler, _HANDLER_KEY_ATTR, file_key)
            logger.addHandler(handler)
    return logger


class _StdoutHandler(logging.StreamHandler):
    """A console handler that writes to ``sys.stdout`` as it is when each record is
    emitted, so a later redirection (``contextlib.redirect_stdout``, pytest's capture)
    receives the logs, and a closed earlier stream is never written to."""

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stdout

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass  # always sys.stdout


def _normalize(filename: str) -> str:
    return filename if "://" in filename else os.path.abspath(filename)


@functools.cache
def _cached_log_stream(filename: str) -> IO[str]:
    """Open ``filename`` for appending once per process; closed at exit."""
    if "://" in filename:
        from heron.utils.file_io import PathManager  # remote log files go through fsspec

        stream = PathManager.open(filename, "a")
    else:
        parent = os.path.dirname(filename)
        if parent:
            os.makedirs(parent, exist_ok=True)
        stream = open(filename, "a")  # noqa: SIM115 (kept open for the process's lifetime)
    atexit.register(stream.close)
    return stream


def _find_caller() -> tuple[str, tuple[str, int, str]]:
    """Return the module name and (file, line, function) of the first caller outside here."""
    frame = sys._getframe(2)
    while frame:
        code = frame.f_code
        if os.path.join("utils", "logger.") not in code.co_filename:
            mod_name = frame.f_globals.get("__name__", "heron")
            if mod_name == "__main__":
                mod_name = "heron"
            return mod_name, (code.co_filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return "heron", ("", 0, "")


_LOG_COUNTER: Counter = Counter()
_LOG_TIMER: dict[Any, float] = {}


def log_first_n(
    lvl: int,
    msg: str,
    n: int = 1,
    *,
    name: str | None = None,
    key: str | tuple[str, ...] = "caller",
) -> None:
    """Log ``msg`` only the first ``n`` times per key.

    Args:
        lvl: the logging level.
        msg: the message.
        n: how many times to log it.
        name: the logger's name; default, the calling module's.
        key: ``"caller"`` (count per calling line), ``"message"`` (count per message text),
            or both as a tuple (count per line and message).

    Raises:
        ValueError: if ``key`` is empty or names something else.
    """
    keys = (key,) if isinstance(key, str) else tuple(key)
    if not keys or not set(keys) <= {"caller", "message"}:
        raise ValueError(f"key must be 'caller', 'message' or both, got {key!r}")
    caller_module, caller_key = _find_caller()
    hash_key: tuple = ()
    if "caller" in keys:
        hash_key += caller_key
    if "message" in keys:
        hash_key += (msg,)
    _LOG_COUNTER[hash_key] += 1
    if _LOG_COUNTER[hash_key] <= n:
        logging.getLogger(name or caller_module).log(lvl, msg)


def log_every_n(lvl: int, msg: str, n: int = 1, *, name: str | None = None) -> None:
    """Log ``msg`` on the 1st, (n+1)-th, (2n+1)-th, ... call from the same line.

    Raises:
        ValueError: if ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    caller_module, key = _find_caller()
    _LOG_COUNTER[key] += 1
    if n == 1 or _LOG_COUNTER[key] % n == 1:
        logging.getLogger(name or caller_module).log(lvl, msg)


def log_every_n_seconds(lvl: int, msg: str, n: float = 1, *, name: str | None = None) -> None:
    """Log ``msg`` from a line at most once every ``n`` seconds (the first call logs)."""
    caller_module, key = _find_caller()
    last_logged = _LOG_TIMER.get(key)
    now = time.time()
    if last_logged is None or now - last_logged >= n:
        logging.getLogger(name or caller_module).log(lvl, msg)
        _LOG_TIMER[key] = now


def create_small_table(small_dict: dict[str, Any]) -> str:
    """Format a dict as a one-row table (keys as headers), e.g. for metrics.

    Floats are shown with 3 decimals; an empty dict gives an empty string.
    """
    if not small_dict:
        return ""
    keys, values = tuple(zip(*small_dict.items()))
    return tabulate(
        [values],
        headers=keys,
        tablefmt="pipe",
        floatfmt=".3f",
        stralign="center",
        numalign="center",
    )


def _log_api_usage(identifier: str) -> None:
    """Report use of a Heron API to PyTorch's internal usage logging (a no-op by default)."""
    torch._C._log_api_usage_once("heron." + identifier)
