"""The HTTP API of heron.serve.app against fake predictors with known outputs, on a live
server (uvicorn on 127.0.0.1, random port)."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util
from serve_helpers import FAKE_INSTANCES, THING_CLASSES, FakePredictor, encode_image

from heron.serve.app import create_app

IMAGE = np.full((24, 32, 3), 100, dtype=np.uint8)
PNG = encode_image(IMAGE)


def _post(client: httpx.Client, data: bytes = PNG, **params) -> httpx.Response:
    return client.post("/v1/predict", params=params, files={"image": ("x.png", data)})


def _start(live_server, predictor=None, **kwargs):
    predictor = predictor if predictor is not None else FakePredictor()
    app = create_app(predictor=predictor, metadata={"thing_classes": THING_CLASSES}, **kwargs)
    server = live_server(app)
    return server, httpx.Client(base_url=server.url, timeout=30)


def test_health_ready_and_model_info_for_a_ready_predictor(live_server):
    _, client = _start(live_server, max_batch=4, max_image_mb=5)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/model").json()
    assert info["classes"] == THING_CLASSES
    assert info["stuff_classes"] == []
    assert info["max_batch"] == 4 and info["max_image_mb"] == 5
    assert info["tasks"] == ["instances"]
    assert info["input_format"] == "BGR"
    assert info["heron_version"]


def test_predict_returns_instances_sorted_by_score_with_rle_masks(live_server):
    _, client = _start(live_server)
    response = _post(client)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"height": 24, "width": 32}
    # FAKE_INSTANCES scores 0.3, 0.9, 0.6 -> descending order 0.9, 0.6, 0.3
    expected = sorted(FAKE_INSTANCES, key=lambda t: -t[1])
    assert [i["score"] for i in body["instances"]] == pytest.approx([s for _, s, _ in expected])
    for got, (box, _, cls) in zip(body["instances"], expected):
        assert got["box"] == list(box)
        assert got["class_id"] == cls and got["class_name"] == THING_CLASSES[cls]
        mask = mask_util.decode({"size": got["mask"]["size"], "counts": got["mask"]["counts"]})
        x0, y0, x1, y1 = (int(v) for v in box)
        assert mask.shape == (24, 32)
        assert mask.sum() == (x1 - x0) * (y1 - y0) and mask[y0:y1, x0:x1].all()
    assert body["timing"]["batch_size"] == 1
    assert "visualization" not in body


def test_predict_accepts_json_base64_with_and_without_data_url(live_server):
    _, client = _start(live_server)
    encoded = base64.b64encode(PNG).decode()
    for image in (encoded, "data:image/png;base64," + encoded):
        response = client.post("/v1/predict", json={"image": image})
        assert response.status_code == 200, response.text
        assert len(response.json()["instances"]) == 3


def test_score_threshold_and_classes_filter_instances(live_server):
    _, client = _start(live_server)
    # scores 0.9 (class 0), 0.6 (class 2), 0.3 (class 1): >= 0.5 keeps classes 0 and 2
    kept = _post(client, score_threshold=0.5).json()["instances"]
    assert [i["class_id"] for i in kept] == [0, 2]
    assert [i["class_id"] for i in _post(client, classes="1").json()["instances"]] == [1]
    by_name = _post(client, classes="triangle,circle").json()["instances"]
    assert [i["class_id"] for i in by_name] == [0, 2]
    both = _post(client, classes="1,2", score_threshold=0.5).json()["instances"]
    assert [i["class_id"] for i in both] == [2]


def test_visualize_returns_a_png_of_the_image_size(live_server):
    _, client = _start(live_server)
    body = _post(client, visualize="true").json()
    drawn = Image.open(io.BytesIO(base64.b64decode(body["visualization"])))
    assert drawn.format == "PNG"
    assert drawn.size == (32, 24)  # (width, height)


GIF = io.BytesIO()
Image.new("RGB", (8, 8)).save(GIF, format="GIF")
TIFF = io.BytesIO()
Image.new("RGB", (8, 8)).save(TIFF, format="TIFF")


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"files": {"image": ("a.png", b"hello, not an image")}}, 400, "not an image"),
        ({"files": {"image": ("a.png", PNG[: len(PNG) // 2])}}, 400, "cannot decode"),
        ({"files": {"image": ("a.png", b"")}}, 400, "empty"),
        ({"files": {"image": ("a.gif", GIF.getvalue())}}, 415, "GIF"),
        ({"files": {"image": ("a.tif", TIFF.getvalue())}}, 415, "TIFF"),
        ({"files": {"picture": ("a.png", PNG)}}, 400, "no 'image' field"),
        ({"data": {"image": "text"}}, 415, "Content-Type"),  # form-urlencoded
        ({"content": b"abc", "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "JSON"),
        ({"json": [1, 2]}, 422, "object"),
        ({"json": {"img": "x"}}, 400, "no 'image' field"),
        ({"json": {"image": 5}}, 422, "base64 string"),
        ({"json": {"image": "not base64!!"}}, 400, "base64"),
        ({"json": {"image": base64.b64encode(b"garbage").decode()}}, 400, "not an image"),
        ({"params": {"score_threshold": "abc"}}, 422, "score_threshold"),
        ({"params": {"score_threshold": "1.5"}}, 422, "score_threshold"),
        ({"params": {"classes": "dog"}}, 422, "classes"),
        ({"params": {"classes": "7"}}, 422, "classes"),
        ({"params": {"visualize": "maybe"}}, 422, "visualize"),
    ],
)
def test_bad_input_gets_a_json_error_and_the_next_request_succeeds(
    live_server, kwargs, status, words
):
    _, client = _start(live_server)
    if "params" in kwargs:
        kwargs = {**kwargs, "files": {"image": ("x.png", PNG)}}
    response = client.post("/v1/predict", **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    assert words in body["error"]
    assert _post(client).status_code == 200


def test_image_over_the_size_limit_gets_413(live_server):
    _, client = _start(live_server, max_image_mb=0.01)  # 10485 bytes
    rng = np.random.default_rng(0)
    big = encode_image(rng.integers(0, 255, size=(80, 80, 3), dtype=np.uint8))
    assert len(big) > 10485  # noise does not compress: ~19 kB
    response = _post(client, big)
    assert response.status_code == 413 and "limit" in response.json()["error"]
    # base64 in JSON: the body fits (4/3 of the limit plus framing), the image does not
    response = client.post("/v1/predict", json={"image": base64.b64encode(big[:12000]).decode()})
    assert response.status_code == 413
    # no Content-Length (chunked): the bytes are counted while reading; the body limit is
    # 10485 * 4 // 3 + 65536 = 79516 bytes, and 20 chunks of 4096 bytes make 81920
    response = client.post(
        "/v1/predict",
        content=(b"x" * 4096 for _ in range(20)),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert _post(client).status_code == 200


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_over_the_pixel_limit_gets_413(live_server, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # IMAGE is 32 x 24 = 768 pixels
    _, client = _start(live_server)
    response = _post(client)
    assert response.status_code == 413 and "pixels" in response.json()["error"]


def test_full_queue_answers_503_with_retry_after(live_server):
    predictor = FakePredictor(gated=True)
    server, client = _start(live_server, predictor, queue_size=1, max_batch=1, max_wait_ms=0)
    results = {}

    def send(name):
        with httpx.Client(base_url=server.url, timeout=30) as c:
            results[name] = _post(c)

    first = threading.Thread(target=send, args=("first",))
    first.start()
    assert predictor.entered.wait(10)  # the first image is in the model
    second = threading.Thread(target=send, args=("second",))
    second.start()
    batcher = server.app.state.service.batcher
    deadline = time.monotonic() + 10
    while batcher.depth < 1:  # the second image waits in the queue
        assert time.monotonic() < deadline
        time.sleep(0.01)
    response = _post(client)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "queue is full" in response.json()["error"]
    predictor.release.set()
    first.join(10)
    second.join(10)
    assert results["first"].status_code == 200 and results["second"].status_code == 200


def test_model_that_raises_gets_500_and_the_next_request_succeeds(live_server):
    predictor = FakePredictor()
    _, client = _start(live_server, predictor)
    predictor.fail_next = True
    response = _post(client)
    assert response.status_code == 500
    assert "the model raised RuntimeError: fake model failure" in response.json()["error"]
    assert _post(client).status_code == 200


def test_concurrent_requests_are_batched_up_to_max_batch(live_server):
    predictor = FakePredictor(gated=True)
    server, client = _start(live_server, predictor, max_batch=4, max_wait_ms=50)
    statuses = []

    def send():
        with httpx.Client(base_url=server.url, timeout=30) as c:
            statuses.append(_post(c).status_code)

    threads = [threading.Thread(target=send) for _ in range(9)]
    threads[0].start()
    assert predictor.entered.wait(10)  # batch 1 holds the first image; 8 more queue up
    for t in threads[1:]:
        t.start()
    batcher = server.app.state.service.batcher
    deadline = time.monotonic() + 10
    while batcher.depth < 8:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    predictor.release.set()
    for t in threads:
        t.join(10)
    assert statuses == [200] * 9
    assert predictor.batch_sizes == [1, 4, 4]
    metrics = client.get("/metrics").text
    assert "heron_batch_size_count 3.0" in metrics
    assert 'heron_requests_total{endpoint="/v1/predict",status="200"} 9.0' in metrics


def test_graceful_shutdown_finishes_the_request_in_flight(live_server):
    predictor = FakePredictor(gated=True)
    server, _ = _start(live_server, predictor)
    result = {}

    def send():
        with httpx.Client(base_url=server.url, timeout=30) as c:
            result["response"] = _post(c)

    sender = threading.Thread(target=send)
    sender.start()
    assert predictor.entered.wait(10)
    server.server.should_exit = True
    time.sleep(0.3)
    assert server.thread.is_alive()  # waiting for the request in flight
    with pytest.raises(httpx.ConnectError):  # no new connections
        httpx.get(server.url + "/healthz", timeout=5)
    predictor.release.set()
    sender.join(10)
    server.thread.join(10)
    assert result["response"].status_code == 200
    assert not server.thread.is_alive()


def test_readyz_is_503_while_loading_and_after_a_failed_load(live_server, monkeypatch):
    import heron.serve.model as serve_model
    from heron.config import get_cfg

    loaded = threading.Event()

    def slow_build(cfg, max_batch):
        assert loaded.wait(10)
        return FakePredictor()

    monkeypatch.setattr(serve_model, "build_predictor", slow_build)
    cfg = get_cfg()
    server = live_server(create_app(cfg))
    client = httpx.Client(base_url=server.url, timeout=30)
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json() == {"status": "loading"}
    response = _post(client)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    loaded.set()
    deadline = time.monotonic() + 10
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert _post(client).status_code == 200

    def failing_build(cfg, max_batch):
        raise FileNotFoundError("no checkpoint here")

    monkeypatch.setattr(serve_model, "build_predictor", failing_build)
    server = live_server(create_app(cfg))
    client = httpx.Client(base_url=server.url, timeout=30)
    deadline = time.monotonic() + 10
    while (body := client.get("/readyz").json())["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert body == {"status": "failed", "error": "FileNotFoundError: no checkpoint here"}
    response = _post(client)
    assert response.status_code == 503 and "failed to load" in response.json()["error"]


def test_unknown_paths_and_methods_get_json_errors(live_server):
    _, client = _start(live_server)
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["status"] == 404
    response = client.get("/v1/predict")
    assert response.status_code == 405 and "GET" in response.json()["error"]


def test_page_is_served_as_html_or_404_when_missing(live_server, monkeypatch, tmp_path):
    import heron.serve.app as serve_app

    page = tmp_path / "index.html"
    page.write_text("<!doctype html><title>heron</title>")
    monkeypatch.setattr(serve_app, "PAGE_PATH", page)
    _, client = _start(live_server)
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == "<!doctype html><title>heron</title>"
    page.unlink()
    response = client.get("/")
    assert response.status_code == 404 and "index.html" in response.json()["error"]


def test_create_app_rejects_missing_model_and_bad_limits():
    with pytest.raises(ValueError, match=r"cfg .* or predictor"):
        create_app()
    with pytest.raises(ValueError, match="max_batch"):
        create_app(predictor=FakePredictor(), max_batch=0)
    with pytest.raises(ValueError, match="max_image_mb"):
        create_app(predictor=FakePredictor(), max_image_mb=0)
    with pytest.raises(TypeError, match="callable"):
        create_app(predictor=object())
