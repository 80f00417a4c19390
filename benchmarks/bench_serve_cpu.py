"""Throughput and latency of `heron serve` on the CPU: dynamic batching on against off.

The shapes demo Mask R-CNN (``Shapes/mask_rcnn_R_18_FPN_demo.yaml``: ResNet-18 FPN,
160-pixel test size, score threshold 0.05) with seeded random weights whose batch-norm
statistics are set by one calibration pass (so activations keep a sane scale and the heads
see a realistic number of boxes) is served in this process by uvicorn on 127.0.0.1 (a
thread). Clients are asyncio httpx tasks in the main thread: each of C clients sends one
160x160 PNG after another (multipart upload) until --requests answers have arrived.
Throughput is answers per second of wall time; latency is per request, client side.
"Batching on" is max_batch 8, max_wait_ms 10; "off" is max_batch 1, max_wait_ms 0.

    .venv/bin/python benchmarks/bench_serve_cpu.py [--requests 96] [--clients 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cpu_inference import calibrate_norms

SIZE = 160
SETTINGS = {"on": {"max_batch": 8, "max_wait_ms": 10}, "off": {"max_batch": 1, "max_wait_ms": 0}}


def _image() -> np.ndarray:
    """A (160, 160, 3) BGR uint8 image: noise with three filled shapes."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, size=(SIZE, SIZE, 3), dtype=np.uint8)
    image[20:70, 15:80] = (40, 40, 220)
    image[90:150, 100:150] = (60, 200, 40)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image[(yy - 120) ** 2 + (xx - 45) ** 2 < 25**2] = (200, 120, 30)
    return image


def _png(image_bgr: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1])).save(buffer, format="PNG")
    return buffer.getvalue()


def build_config(folder: str):
    """The demo config with seeded, norm-calibrated random weights saved under `folder`."""
    from heron.config import get_cfg
    from heron.model_zoo import get_config_file
    from heron.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("Shapes/mask_rcnn_R_18_FPN_demo.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.as_tensor(_image()[:, :, ::-1].transpose(2, 0, 1).astype("float32"))

    def run():
        return len(model([{"image": image, "height": SIZE, "width": SIZE}])[0]["instances"])

    calibrate_norms(model, run)
    cfg.MODEL.WEIGHTS = os.path.join(folder, "model.pth")
    torch.save({"model": model.state_dict()}, cfg.MODEL.WEIGHTS)
    cfg.freeze()
    return cfg


class Server:
    """uvicorn serving `app` on a free port of 127.0.0.1, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        from heron.cli.serve import bind_socket

        sock = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]})
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()


async def _load(url: str, png: bytes, clients: int, requests: int) -> dict[str, float]:
    """Send `requests` images from `clients` concurrent clients; summary statistics."""
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    detections: list[int] = []
    remaining = requests

    async def client(session: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await session.post("/v1/predict", files={"image": ("a.png", png)})
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            body = response.json()
            batch_sizes.append(body["timing"]["batch_size"])
            detections.append(len(body["instances"]))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - started
    latencies_ms = sorted(x * 1000 for x in latencies)
    return {
        "throughput": len(latencies) / wall,
        "p50": statistics.median(latencies_ms),
        "p95": latencies_ms[math.ceil(0.95 * len(latencies_ms)) - 1],  # nearest rank
        "batch": statistics.mean(batch_sizes),
        "detections": statistics.mean(detections),
    }


def _wait_ready(url: str) -> None:
    import httpx

    while httpx.get(url + "/readyz").status_code != 200:
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=96, help="answers per setting")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--warmup", type=int, default=8, help="requests before each setting")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from heron.serve.app import create_app

    png = _png(_image())
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        cfg = build_config(folder)
        for batching, settings in SETTINGS.items():
            server = Server(create_app(cfg, queue_size=max(64, max(args.clients)), **settings))
            try:
                _wait_ready(server.url)
                for clients in args.clients:
                    asyncio.run(_load(server.url, png, clients, args.warmup))
                    stats = asyncio.run(_load(server.url, png, clients, args.requests))
                    rows.append((batching, clients, stats))
                    print(f"batching {batching}, {clients} clients: {stats}", file=sys.stderr)
            finally:
                server.stop()
    print(
        f"Mask R-CNN R18-FPN demo, CPU, {torch.get_num_threads()} threads, {SIZE}x{SIZE} PNG, "
        f"{args.requests} requests per row"
    )
    print()
    print("| batching | clients | images/s | p50 latency | p95 latency | mean batch | detections |")
    print("|---|---|---|---|---|---|---|")
    for batching, clients, s in rows:
        print(
            f"| {batching} | {clients} | {s['throughput']:.1f} | {s['p50']:.0f} ms "
            f"| {s['p95']:.0f} ms | {s['batch']:.1f} | {s['detections']:.0f} |"
        )


if __name__ == "__main__":
    main()
