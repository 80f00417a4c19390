"""The error type that the service turns into a JSON error response."""

from __future__ import annotations

__all__ = ["ServeError"]


class ServeError(Exception):
    """A request the service cannot answer, with the HTTP status to answer it with.

    The app turns it into the JSON body ``{"error": message, "status": status}``.

    Args:
        status: HTTP status code, e.g. 400, 413, 415, 422, 500, 503.
        message: what is wrong, naming the field or parameter at fault.
        headers: extra response headers, e.g. ``{"Retry-After": "1"}``.
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
