"""The service with a real (tiny, untrained) Mask R-CNN loaded from a config: results equal
DefaultPredictor's, and concurrent clients are batched."""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from serve_helpers import encode_image, shapes_image, wait_ready

from heron.engine.predictor import DefaultPredictor
from heron.serve.app import create_app


@pytest.fixture(scope="module")
def model_server(tiny_model):
    """(server, client) serving the tiny model with batches of up to 8 within 50 ms."""
    from serve_helpers import LiveServer

    cfg, _, _ = tiny_model
    server = LiveServer(create_app(cfg, max_batch=8, max_wait_ms=50))
    client = httpx.Client(base_url=server.url, timeout=60)
    wait_ready(client)
    yield server, client
    client.close()
    server.stop()


def test_results_equal_default_predictor(model_server, tiny_model):
    _, client = model_server
    cfg, _, _ = tiny_model
    image = shapes_image(96, 128)
    response = client.post("/v1/predict", files={"image": ("a.png", encode_image(image))})
    assert response.status_code == 200, response.text
    got = response.json()["instances"]
    expected = DefaultPredictor(cfg)(image)["instances"]
    assert len(got) == len(expected) > 0  # SCORE_THRESH_TEST 0 keeps detections
    order = torch.argsort(expected.scores, descending=True, stable=True)
    expected = expected[order]
    torch.testing.assert_close(
        torch.tensor([i["box"] for i in got]), expected.pred_boxes.tensor, rtol=0, atol=1e-4
    )
    torch.testing.assert_close(
        torch.tensor([i["score"] for i in got]), expected.scores, rtol=0, atol=1e-6
    )
    assert [i["class_id"] for i in got] == expected.pred_classes.tolist()
    names = ["circle", "square", "triangle", "star", "ellipse"]  # shapes_val's thing_classes
    assert [i["class_name"] for i in got] == [names[c] for c in expected.pred_classes.tolist()]
    masks = np.stack([mask_util.decode(i["mask"]) for i in got])
    np.testing.assert_array_equal(masks.astype(bool), expected.pred_masks.numpy())


def test_model_info_describes_the_config(model_server, tiny_model):
    _, client = model_server
    _, _, weights = tiny_model
    info = client.get("/v1/model").json()
    assert info["architecture"] == "GeneralizedRCNN"
    assert info["classes"] == ["circle", "square", "triangle", "star", "ellipse"]
    assert info["tasks"] == ["instances", "masks"]
    assert info["weights"] == "model.pth" and weights.endswith("model.pth")
    assert info["device"] == "cpu" and info["input_format"] == "BGR"


def _batch_size_histogram(metrics: str) -> dict[str, float]:
    """{le: cumulative count} of heron_batch_size."""
    pattern = r'^heron_batch_size_bucket\{le="([^"]+)"\} (\S+)$'
    return {le: float(v) for le, v in re.findall(pattern, metrics, flags=re.MULTILINE)}


def test_32_concurrent_clients_are_answered_and_batched(model_server):
    server, client = model_server
    before = _batch_size_histogram(client.get("/metrics").text)
    png = encode_image(shapes_image(96, 128))

    async def one(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/predict", files={"image": ("a.png", png)})

    async def all_clients() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(*(one(c) for _ in range(32)))

    responses = asyncio.run(all_clients())
    assert [r.status_code for r in responses] == [200] * 32
    assert max(r.json()["timing"]["batch_size"] for r in responses) > 1
    after = _batch_size_histogram(client.get("/metrics").text)
    batches = after["+Inf"] - before.get("+Inf", 0)
    single = after["1.0"] - before.get("1.0", 0)
    assert batches < 32  # 32 images took fewer forwards
    assert batches - single > 0  # some batch held more than one image
    assert after["8.0"] == after["+Inf"]  # never more than max_batch
