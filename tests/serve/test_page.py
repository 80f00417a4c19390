"""The page at `/` (heron/serve/static/index.html), driven in headless Chromium against a real
server on 127.0.0.1 whose predictor is a fake with known detections."""

from __future__ import annotations

import base64
import io
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from heron.data.catalog import Metadata
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances

uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

INSTALL_HINT = "run tools/install_chromium.sh (as root, with apt-get) to install it"
CLASSES = ["duck", "swan", "heron"]
HEIGHT, WIDTH = 240, 320
# (class id, score, XYXY box). Listed out of score order: the page shows them sorted.
DETECTIONS = [
    (0, 0.6, (160.0, 40.0, 260.0, 140.0)),
    (1, 0.3, (60.0, 150.0, 140.0, 220.0)),
    (2, 0.9, (20.4, 29.6, 119.7, 110.2)),
]
# Table rows expected at each threshold, written out by hand: class name, score with two
# decimals, box rounded to whole pixels (20.4 -> 20, 29.6 -> 30, 119.7 -> 120, 110.2 -> 110).
ROW_HERON = ["heron", "0.90", "20, 30, 120, 110"]
ROW_DUCK = ["duck", "0.60", "160, 40, 260, 140"]
ROW_SWAN = ["swan", "0.30", "60, 150, 140, 220"]
# The heron (score 0.9) has a mask: x in [40, 70), y in [50, 90), taller than wide so that
# a mask read in the wrong pixel order (rows for columns) lands elsewhere. The others' masks
# are empty.
HERON_MASK_X, HERON_MASK_Y = slice(40, 70), slice(50, 90)
# One keypoint per detection, (x, y, score); the page skips keypoints scored below 0.05.
KEYPOINTS = {0: (200.0, 100.0, 2.0), 1: (100.0, 200.0, 1.0), 2: (100.0, 60.0, 0.02)}
# Points on a box's left edge, halfway down (away from the label drawn at its top corner),
# and one far from every box and label.
ON_HERON_EDGE = (20, 70)
ON_SWAN_EDGE = (60, 190)
FAR_FROM_BOXES = (300, 228)
# Inside the heron's mask (and inside the mask's transpose: x in [50, 90), y in [40, 70)).
IN_HERON_MASK = (45, 85)
IN_TRANSPOSED_MASK_ONLY = (80, 45)
ON_DUCK_KEYPOINT = (200, 100)
ON_LOW_SCORE_KEYPOINT = (100, 60)
WAIT_S = 10


class FakePredictor:
    """Returns the same `DETECTIONS` for every image, sized to the image; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: list[np.ndarray]) -> list[dict]:
        self.calls += 1
        outputs = []
        for image in images:
            instances = Instances(image.shape[:2])
            instances.pred_boxes = Boxes(torch.tensor([box for _, _, box in DETECTIONS]))
            instances.scores = torch.tensor([score for _, score, _ in DETECTIONS])
            instances.pred_classes = torch.tensor([cls for cls, _, _ in DETECTIONS])
            masks = torch.zeros((len(DETECTIONS), *image.shape[:2]), dtype=torch.bool)
            masks[2, HERON_MASK_Y, HERON_MASK_X] = True  # DETECTIONS[2] is the heron
            instances.pred_masks = masks
            keypoints = [[KEYPOINTS[cls]] for cls, _, _ in DETECTIONS]
            instances.pred_keypoints = torch.tensor(keypoints)  # (N, 1, 3)
            outputs.append({"instances": instances})
        return outputs


def _find(name: str) -> str | None:
    path = Path("/usr/bin") / name
    return str(path) if path.is_file() else shutil.which(name)


@pytest.fixture(scope="module")
def browser():
    chromium = _find("chromium") or _find("chromium-browser")
    chromedriver = _find("chromedriver")
    if chromium is None or chromedriver is None:
        missing = "chromium" if chromium is None else "chromedriver"
        pytest.skip(f"{missing} is not installed; {INSTALL_HINT}")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    # An explicit driver path keeps Selenium Manager out: it never downloads anything.
    try:
        driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    except WebDriverException as err:
        pytest.skip(f"headless chromium did not start ({err.msg}); {INSTALL_HINT}")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server():
    """A real uvicorn server on a random 127.0.0.1 port, running the app in a thread."""
    from heron.serve.app import create_app

    predictor = FakePredictor()
    metadata = Metadata(name="page_test", thing_classes=CLASSES)
    app = create_app(predictor=predictor, metadata=metadata)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uv_server = uvicorn.Server(config)
    thread = threading.Thread(target=uv_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + WAIT_S
    while not uv_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield url, predictor
    uv_server.should_exit = True
    thread.join(timeout=WAIT_S)
    sock.close()


def _gradient_png(path: Path) -> np.ndarray:
    """Writes a (HEIGHT, WIDTH) RGB gradient as a PNG; returns its (H, W, 3) uint8 pixels."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    pixels = np.stack([x % 256, y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _open_page(driver, url: str) -> None:
    driver.get(url + "/")
    _wait(driver, lambda d: _status(d).startswith("Ready"), "the page to report Ready")


def _wait(driver, condition, what: str) -> None:
    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition)
    except TimeoutException:
        pytest.fail(f"timed out waiting for {what}; #status is {_status(driver)!r}")


def _status(driver) -> str:
    return driver.find_element(By.ID, "status").text


def _rows(driver) -> list[list[str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#detections tbody tr")
    return [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def _canvas_pixel(driver, xy: tuple[int, int]) -> list[int]:
    """RGB of the canvas at image pixel (x, y)."""
    return driver.execute_script(
        "const c = document.getElementById('canvas');"
        "return Array.from(c.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1)"
        ".data.slice(0, 3));",
        *xy,
    )


def _image_pixel(pixels: np.ndarray, xy: tuple[int, int]) -> list[int]:
    x, y = xy
    return pixels[y, x].tolist()


def _set_threshold(driver, value: float) -> None:
    driver.execute_script(
        "const s = document.getElementById('threshold');"
        "s.value = arguments[0];"
        "s.dispatchEvent(new Event('input', {bubbles: true}));",
        str(value),
    )


def test_upload_draws_boxes_masks_keypoints_fills_table_and_threshold_filters_in_page(
    browser, server, tmp_path
):
    url, predictor = server
    image_path = tmp_path / "birds.png"
    pixels = _gradient_png(image_path)
    _open_page(browser, url)
    assert browser.find_element(By.ID, "threshold").get_attribute("value") == "0.5"
    calls_before = predictor.calls

    browser.find_element(By.ID, "file-input").send_keys(str(image_path))
    _wait(browser, lambda d: _status(d).startswith("2 detections"), "2 detections")

    # Threshold 0.5 keeps scores 0.9 and 0.6, highest first.
    assert _rows(browser) == [ROW_HERON, ROW_DUCK]
    assert _status(browser).endswith(" ms)")
    size = browser.execute_script(
        "const c = document.getElementById('canvas'); return [c.width, c.height];"
    )
    assert size == [WIDTH, HEIGHT]
    # The image is drawn 1:1 (a lossless PNG, so exact) and the shown box over it; the box
    # of score 0.3 is below the threshold and not drawn.
    assert _canvas_pixel(browser, FAR_FROM_BOXES) == _image_pixel(pixels, FAR_FROM_BOXES)
    assert _canvas_pixel(browser, ON_HERON_EDGE) != _image_pixel(pixels, ON_HERON_EDGE)
    assert _canvas_pixel(browser, ON_SWAN_EDGE) == _image_pixel(pixels, ON_SWAN_EDGE)
    # The heron's mask is tinted where it is, not where its transpose would be; keypoints
    # are drawn unless their score is below 0.05.
    assert _canvas_pixel(browser, IN_HERON_MASK) != _image_pixel(pixels, IN_HERON_MASK)
    transposed = IN_TRANSPOSED_MASK_ONLY
    assert _canvas_pixel(browser, transposed) == _image_pixel(pixels, transposed)
    assert _canvas_pixel(browser, ON_DUCK_KEYPOINT) != _image_pixel(pixels, ON_DUCK_KEYPOINT)
    low = ON_LOW_SCORE_KEYPOINT
    assert _canvas_pixel(browser, low) == _image_pixel(pixels, low)

    _set_threshold(browser, 0.2)
    assert browser.find_element(By.ID, "threshold-value").text == "0.20"
    assert _rows(browser) == [ROW_HERON, ROW_DUCK, ROW_SWAN]
    assert _status(browser).startswith("3 detections (")
    assert _canvas_pixel(browser, ON_SWAN_EDGE) != _image_pixel(pixels, ON_SWAN_EDGE)

    _set_threshold(browser, 0.95)
    assert _rows(browser) == []
    assert _status(browser).startswith("0 detections (")
    for point in (ON_HERON_EDGE, IN_HERON_MASK, ON_DUCK_KEYPOINT):
        assert _canvas_pixel(browser, point) == _image_pixel(pixels, point)
    assert _canvas_pixel(browser, FAR_FROM_BOXES) == _image_pixel(pixels, FAR_FROM_BOXES)

    # One upload, one prediction: the threshold filters in the page, with no new request.
    assert predictor.calls == calls_before + 1


def test_image_dropped_on_drop_zone_is_predicted(browser, server, tmp_path):
    url, predictor = server
    buffer = io.BytesIO()
    Image.new("RGB", (WIDTH, HEIGHT), (40, 90, 160)).save(buffer, format="PNG")
    _open_page(browser, url)
    calls_before = predictor.calls

    browser.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));"
        "const transfer = new DataTransfer();"
        "transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
        "document.getElementById('drop-zone').dispatchEvent("
        "new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));",
        base64.b64encode(buffer.getvalue()).decode("ascii"),
    )
    _wait(browser, lambda d: _status(d).startswith("2 detections"), "2 detections")

    assert _rows(browser) == [ROW_HERON, ROW_DUCK]
    assert predictor.calls == calls_before + 1


def test_server_error_is_shown_in_status(browser, server, tmp_path):
    url, _ = server
    bad_path = tmp_path / "notes.txt"
    bad_path.write_bytes(b"these bytes are not an image")
    # The message the server gives for this upload, asked directly.
    with bad_path.open("rb") as file:
        response = httpx.post(
            url + "/v1/predict",
            params={"score_threshold": 0},
            files={"image": (bad_path.name, file, "text/plain")},
        )
    assert response.status_code >= 400
    expected = response.json()["error"]
    assert expected
    _open_page(browser, url)

    browser.find_element(By.ID, "file-input").send_keys(str(bad_path))
    _wait(
        browser,
        lambda d: _status(d) not in ("", "Predicting...") and "Ready" not in _status(d),
        "the server's answer",
    )

    assert _status(browser) == expected
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
    assert _rows(browser) == []
