"""Suite-wide settings."""

from __future__ import annotations

import os

import torch


def pytest_configure(config):
    # Under xdist every worker is its own process; with torch's default of one thread per
    # core they would oversubscribe the CPU (2 workers x 2 threads on 2 cores runs several
    # times slower than 2 x 1), so each worker gets one intra-op thread.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    config.addinivalue_line("markers", "parity: compares outputs with the Detectron2 parity kit")
