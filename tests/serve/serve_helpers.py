"""Helpers for the serving tests: live servers on 127.0.0.1 (uvicorn in a thread), fake
predictors with known outputs, and encoded images."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from heron.cli.serve import bind_socket  # noqa: E402
from heron.structures.boxes import Boxes  # noqa: E402
from heron.structures.instances import Instances  # noqa: E402

THING_CLASSES = ["circle", "square", "triangle"]
# (box XYXY, score, class) of the fake predictor's instances, given in no particular order.
FAKE_INSTANCES = [
    ((1.0, 2.0, 10.0, 12.0), 0.3, 1),
    ((5.0, 5.0, 20.0, 18.0), 0.9, 0),
    ((0.0, 0.0, 30.0, 20.0), 0.6, 2),
]


def fake_output(image: np.ndarray) -> dict[str, Any]:
    """The fake predictors' output for one (H, W, 3) image: FAKE_INSTANCES, each with the
    mask of its box (pixels with x0 <= x < x1, y0 <= y < y1)."""
    height, width = image.shape[:2]
    masks = torch.zeros(len(FAKE_INSTANCES), height, width, dtype=torch.bool)
    for i, ((x0, y0, x1, y1), _, _) in enumerate(FAKE_INSTANCES):
        masks[i, int(y0) : int(y1), int(x0) : int(x1)] = True
    instances = Instances(
        (height, width),
        pred_boxes=Boxes(torch.tensor([b for b, _, _ in FAKE_INSTANCES])),
        scores=torch.tensor([s for _, s, _ in FAKE_INSTANCES]),
        pred_classes=torch.tensor([c for _, _, c in FAKE_INSTANCES]),
        pred_masks=masks,
    )
    return {"instances": instances}


class FakePredictor:
    """Returns `fake_output` per image; records each call's batch size. With `gated`, each
    call signals `entered` and blocks until `release` is set. `fail_next` makes the next
    call raise RuntimeError."""

    def __init__(self, gated: bool = False) -> None:
        self.batch_sizes: list[int] = []
        self.gated = gated
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_next = False

    def __call__(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        self.batch_sizes.append(len(images))
        if self.gated:
            self.entered.set()
            assert self.release.wait(30), "the test never released the fake predictor"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("fake model failure")
        return [fake_output(image) for image in images]


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 at a free port, in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        sock = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "the server thread died during startup"
            assert time.monotonic() < deadline, "the server did not start within 30 s"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not stop within 30 s"


def encode_image(image_bgr: np.ndarray, format: str = "PNG") -> bytes:
    """The bytes of an (H, W, 3) BGR uint8 image saved in `format` by Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1])).save(buffer, format=format)
    return buffer.getvalue()


def shapes_image(height: int = 96, width: int = 128) -> np.ndarray:
    """An (H, W, 3) BGR uint8 image: noise with two filled rectangles."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    image[10:50, 12:60] = (40, 40, 220)
    image[55:90, 70:120] = (60, 200, 40)
    return image


def wait_ready(client: Any, timeout: float = 60) -> None:
    """Poll GET /readyz until 200."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, f"not ready within {timeout} s"
        time.sleep(0.05)
