"""heron.utils: infrastructure shared by every other package.

Submodules (import them directly, e.g. ``from heron.utils.events import get_event_storage``):

- ``registry``: ``Registry`` and dotted-path helpers (``locate``)
- ``events``: ``EventStorage`` and ``HistoryBuffer`` for training metrics
- ``comm``: distributed helpers that also work in a single process
- ``logger``: ``setup_logger`` and rate-limited logging
- ``env``: seeding, environment report, ``TORCH_VERSION``
- ``file_io``: ``PathManager`` for local paths, URLs and fsspec protocols
- ``memory``: ``retry_if_cuda_oom``, ``peak_memory_mb``

Nothing is imported eagerly here, so importing ``heron.utils`` stays cheap and cannot
create import cycles.
"""
