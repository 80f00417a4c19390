"""Fixtures for the serving tests: a factory of live servers, and a tiny real Mask R-CNN
checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from serve_helpers import LiveServer


@pytest.fixture
def live_server() -> Iterator[Callable[[Any], LiveServer]]:
    """A factory: live_server(app) starts `app`; every server started is stopped at the end."""
    servers: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        servers.append(LiveServer(app))
        return servers[-1]

    yield start
    for server in servers:
        if server.thread.is_alive():
            server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> tuple[Any, str, str]:
    """(cfg, config_path, weights_path): the shapes demo Mask R-CNN (ResNet-18 FPN) on the
    CPU at 96-128 pixel test size, keeping every detection (SCORE_THRESH_TEST 0), with a
    checkpoint of its weights as built with seed 0."""
    from heron.config import get_cfg
    from heron.model_zoo import get_config_file
    from heron.modeling import build_model

    folder = tmp_path_factory.mktemp("serve_model")
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("Shapes/mask_rcnn_R_18_FPN_demo.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg)
    weights = str(folder / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    cfg.MODEL.WEIGHTS = weights
    config = folder / "config.yaml"
    config.write_text(cfg.dump())
    cfg.freeze()
    return cfg, str(config), weights
