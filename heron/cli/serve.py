"""`heron serve`: serve a model over HTTP (FastAPI + uvicorn, with dynamic batching).

The app itself lives in :mod:`heron.serve.app`; this verb builds the config, binds the
socket (``--port 0`` picks a free port, and the URL printed names the real one) and runs
uvicorn until SIGTERM or SIGINT. Shutdown is graceful: the server stops accepting
connections, answers every request already received, and exits with code 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from typing import Any

from heron.cli.common import add_model_arguments, load_config

__all__ = ["add_parser", "bind_socket", "serve_main"]

_SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add_parser(subparsers: Any) -> None:
    """Register the `serve` verb."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP: JSON predictions, a browser page, Prometheus metrics",
        description="Loads the model of --config-file with --weights and serves it over HTTP: "
        "POST /v1/predict (an image in, its predictions as JSON out), GET /v1/model, "
        "/healthz, /readyz, /metrics, and a page at / to try images in a browser. "
        "Concurrent requests are batched. Put config overrides last, after `--`. Needs the "
        "`serve` extra (pip install heron[serve]).",
    )
    add_model_arguments(parser, weights_required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to bind; 0 picks a free one (default: 8000)"
    )
    parser.add_argument(
        "--max-batch", type=int, default=8, help="most images per forward (default: 8)"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="longest wait for more images after a batch's first one, in ms (default: 10)",
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=64,
        help="most images waiting for a batch; beyond it requests get 503 (default: 64)",
    )
    parser.add_argument(
        "--max-image-mb",
        type=float,
        default=20.0,
        help="largest accepted image file, in MiB (default: 20)",
    )
    parser.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default="info",
        help="uvicorn's log level (default: info)",
    )
    parser.set_defaults(handler=serve_main)


def _check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    for name in ("max_batch", "queue_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_wait_ms < 0:
        raise ValueError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if args.max_image_mb <= 0:
        raise ValueError(f"--max-image-mb must be > 0, got {args.max_image_mb}")
    weights = args.weights
    if weights and "://" not in weights and not os.path.exists(weights):
        raise FileNotFoundError(f"--weights {weights!r}: no such file")


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), IPv4 or IPv6 as `host` resolves; port 0 picks a
    free port."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot bind --host {host} --port {port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def serve_main(args: argparse.Namespace) -> int:
    """Run `heron serve` until SIGTERM/SIGINT; returns the exit code (0 after a graceful
    shutdown, 2 on a usage error)."""
    _check_args(args)
    try:
        import uvicorn

        from heron.serve.app import create_app
    except ImportError as e:
        print(
            f"heron serve: needs the serve extra ({e.name} is missing): pip install 'heron[serve]'",
            file=sys.stderr,
        )
        return 2
    cfg = load_config(args)
    app = create_app(
        cfg,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        max_image_mb=args.max_image_mb,
    )
    sock = bind_socket(args.host, args.port)
    config = uvicorn.Config(app, log_level=args.log_level, lifespan="on")
    # Listening now means a client that read the URL below is queued, not refused, while
    # uvicorn starts.
    sock.listen(config.backlog)
    server = uvicorn.Server(config)
    # uvicorn handles the signals while it runs, then restores the previous handlers and
    # raises the signal it caught again; a no-op handler here keeps that from killing the
    # process after the graceful shutdown, so the exit code is 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in _SHUTDOWN_SIGNALS}
    print(f"heron serve: {cfg.MODEL.META_ARCHITECTURE} on {_url(sock)}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return 0
