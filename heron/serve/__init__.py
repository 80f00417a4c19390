"""HTTP inference service for Heron models (`heron serve`).

Built on FastAPI and uvicorn (the ``serve`` extra). Nothing here is imported by
``import heron``; import the submodules directly::

    from heron.serve.app import create_app

Modules: :mod:`~heron.serve.app` (the ASGI app and its endpoints),
:mod:`~heron.serve.batcher` (dynamic batching), :mod:`~heron.serve.model`
(loading and describing the model), :mod:`~heron.serve.request` (reading request bodies
and query parameters), :mod:`~heron.serve.decode` (image bytes to arrays),
:mod:`~heron.serve.encode` (model outputs to JSON), :mod:`~heron.serve.metrics`
(Prometheus metrics) and :mod:`~heron.serve.errors`.
"""

from __future__ import annotations

__all__: list[str] = []
