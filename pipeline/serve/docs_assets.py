"""API documentation that works offline: Swagger UI (``/docs``) and ReDoc (``/redoc``) load
their JavaScript, CSS and icon from this server, never from a CDN.

The files come from the ``fastapi-offline`` package (a maintained copy of the ``swagger-ui-dist``
and ReDoc bundles); they are served under :data:`DOCS_ASSETS_URL`, which needs no API key, like
the pages themselves.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

DOCS_ASSETS_URL = "/docs/assets"


def offline_docs_app(**kwargs: Any) -> FastAPI:
    """A ``FastAPI(**kwargs)`` whose ``/docs`` and ``/redoc`` pages use local assets only."""
    from fastapi_offline import FastAPIOffline

    return FastAPIOffline(static_url=DOCS_ASSETS_URL, **kwargs)
