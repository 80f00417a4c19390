"""The ASGI app of ``heron serve``: endpoints, lifespan and JSON errors.

Endpoints (see the README's serving section for the full contract):

- ``GET /``: the browser page (``heron/serve/static/index.html``).
- ``GET /healthz``: 200 while the server runs.
- ``GET /readyz``: 200 once the model is loaded and warmed up, else 503.
- ``GET /v1/model``: architecture, class names, input format, version and limits.
- ``POST /v1/predict``: one image in, its predictions as JSON out.
- ``GET /metrics``: Prometheus text format.

Every error is JSON ``{"error": "...", "status": N}``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heron.serve.batcher import BatcherClosedError, BatchTiming, DynamicBatcher, QueueFullError
from heron.serve.decode import decode_image
from heron.serve.encode import outputs_to_json, render_visualization
from heron.serve.errors import ServeError
from heron.serve.metrics import ServeMetrics
from heron.serve.model import ModelState
from heron.serve.request import PredictParams, parse_predict_params, read_image_bytes

__all__ = ["PAGE_PATH", "create_app"]

logger = logging.getLogger(__name__)

PAGE_PATH = Path(__file__).with_name("static") / "index.html"
_ENDPOINTS = ("/", "/healthz", "/readyz", "/v1/model", "/v1/predict", "/metrics")
_RETRY = {"Retry-After": "1"}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class _CountRequests:
    """ASGI middleware that counts answered requests by endpoint and status."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            endpoint = scope["path"] if scope["path"] in _ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()


class _Service:
    """What the endpoints share: settings, the model, the batcher and the metrics."""

    def __init__(
        self,
        cfg: Any,
        model: ModelState,
        *,
        max_batch: int,
        max_wait_ms: float,
        queue_size: int,
        max_image_mb: float,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.max_batch = max_batch
        self.max_image_mb = max_image_mb
        self.max_image_bytes = int(max_image_mb * 1024 * 1024)
        self.metrics = ServeMetrics()
        self.batcher = DynamicBatcher(
            self._predict_batch,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            queue_size=queue_size,
            on_batch=self.metrics.observe_batch,
            on_depth=self.metrics.queue_depth.set,
        )

    def _predict_batch(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        return self.model.predictor(images)

    def draw_metadata(self) -> Any:
        """Metadata for the Visualizer, with the class names the JSON uses."""
        metadata = self.model.resolved_metadata(self.cfg)
        things, stuff = self.model.class_names(self.cfg)
        if metadata is not None and getattr(metadata, "thing_classes", None) is not None:
            return metadata
        extra = dict(metadata) if isinstance(metadata, dict) else {}
        extra.update(thing_classes=things, stuff_classes=stuff)
        return SimpleNamespace(**extra)

    def check_ready(self) -> None:
        if self.model.status == "loading":
            raise ServeError(503, "the model is still loading; retry shortly", _RETRY)
        if self.model.status == "failed":
            raise ServeError(503, f"the model failed to load: {self.model.error}", _RETRY)

    async def predict(self, request: Request) -> dict[str, Any]:
        """The response body of one ``POST /v1/predict``."""
        self.check_ready()
        things, _ = self.model.class_names(self.cfg)
        params = parse_predict_params(request, things)
        if self.batcher.depth >= self.batcher.queue_size:  # refuse before reading the upload
            raise ServeError(503, "server busy: the queue is full; retry shortly", _RETRY)
        data = await read_image_bytes(request, self.max_image_bytes)
        image = await run_in_threadpool(decode_image, data)
        try:
            output, timing = await self.batcher.submit(image)
        except QueueFullError as e:
            raise ServeError(503, f"server busy: {e}; retry shortly", _RETRY) from None
        except BatcherClosedError as e:
            raise ServeError(503, f"server shutting down: {e}", _RETRY) from None
        except Exception as e:
            logger.exception("The model raised on a batch")
            raise ServeError(500, f"the model raised {type(e).__name__}: {e}") from None
        return await run_in_threadpool(self._response_body, image, output, timing, params)

    def _response_body(
        self, image: np.ndarray, output: dict[str, Any], timing: BatchTiming, params: PredictParams
    ) -> dict[str, Any]:
        things, stuff = self.model.class_names(self.cfg)
        fields, filtered = outputs_to_json(
            output,
            thing_classes=things,
            stuff_classes=stuff,
            score_threshold=params.score_threshold,
            class_ids=params.class_ids,
        )
        height, width = image.shape[:2]
        body: dict[str, Any] = {"image": {"height": height, "width": width}, **fields}
        if params.visualize:
            body["visualization"] = render_visualization(image, filtered, self.draw_metadata())
        body["timing"] = {
            "queue_ms": round(timing.queue_ms, 3),
            "inference_ms": round(timing.inference_ms, 3),
            "batch_size": timing.batch_size,
        }
        return body


def _add_routes(app: FastAPI, service: _Service) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        try:
            html = await run_in_threadpool(PAGE_PATH.read_text, encoding="utf-8")
        except FileNotFoundError:
            return _error(404, f"the page is not installed ({PAGE_PATH.name} is missing)")
        return HTMLResponse(html)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        model = service.model
        if model.status == "ready":
            return JSONResponse({"status": "ready"})
        body = {"status": model.status}
        if model.status == "failed":
            body["error"] = model.error
        return JSONResponse(body, status_code=503, headers=_RETRY)

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        return service.model.describe(
            service.cfg, max_batch=service.max_batch, max_image_mb=service.max_image_mb
        )

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        try:
            return JSONResponse(await service.predict(request))
        finally:
            service.metrics.latency.observe(time.perf_counter() - started)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> Response:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return _error(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("Unhandled error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")


def create_app(
    cfg: Any = None,
    *,
    predictor: Any = None,
    max_batch: int = 8,
    max_wait_ms: float = 10,
    queue_size: int = 64,
    max_image_mb: float = 20,
    metadata: Any = None,
) -> FastAPI:
    """The FastAPI app that serves one model.

    Args:
        cfg: a frozen CfgNode (model, MODEL.WEIGHTS, MODEL.DEVICE, INPUT.FORMAT, test
            sizes). Without `predictor`, a :class:`~heron.engine.predictor.BatchPredictor`
            of it (batch size `max_batch`) is built in a background thread at startup and
            warmed up with one forward; ``/readyz`` answers 200 only after that.
        predictor: instead of loading `cfg`, any callable taking a list of (H, W, 3) uint8
            BGR arrays and returning one output dict per image; ready at once.
        max_batch: most images per forward.
        max_wait_ms: longest wait for more images after a batch's first one, milliseconds.
        queue_size: most images waiting for a batch; more get 503 with Retry-After.
        max_image_mb: largest accepted image file, in MiB.
        metadata: class names (``thing_classes``, ``stuff_classes`` as attributes or dict
            keys); default: the predictor's metadata (DATASETS.TEST[0] of the config).

    Raises:
        ValueError: neither `cfg` nor `predictor` given, or a limit is not positive.
    """
    if cfg is None and predictor is None:
        raise ValueError("create_app needs cfg (a config to load) or predictor, got neither")
    if predictor is not None and not callable(predictor):
        raise TypeError(f"predictor must be callable, got {type(predictor).__name__}")
    if not isinstance(max_image_mb, (int, float)) or max_image_mb <= 0:
        raise ValueError(f"max_image_mb must be a positive number, got {max_image_mb!r}")
    model = ModelState(predictor, metadata)
    service = _Service(
        cfg,
        model,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        max_image_mb=max_image_mb,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.batcher.start()
        if predictor is None:
            model.load_in_background(cfg, max_batch)
        try:
            yield
        finally:
            # uvicorn has already waited for the open requests; finish what is queued.
            await service.batcher.close()

    from heron import __version__

    app = FastAPI(
        title="Heron inference service",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(_CountRequests, metrics=service.metrics)
    _add_error_handlers(app)
    _add_routes(app, service)
    return app
