"""A small HTTP client for ``tansaku serve``: ``/v1/search`` and ``/v1/rerank`` as Python calls.

The RAG-framework integrations use it for their remote mode. Whatever the server refuses comes
back as :class:`RemoteError` carrying the server's own message, the HTTP status and the
request field it named, so a bad ``top_n`` or an unknown ``filter`` field reads the same here as
in a ``curl`` session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from tansaku.index.errors import ConfigError, TansakuError
from tansaku.index.hit import Hit

DEFAULT_TIMEOUT_S = 60.0


class RemoteError(TansakuError):
    """A ``tansaku serve`` request failed.

    ``status`` is the HTTP status (None when the server could not be reached), ``field`` the
    request field the server named (``top_n``, ``filter``, ``documents[2].text``...) and
    ``kind`` its error type (``invalid_request_error``, ``authentication_error``...).
    """

    def __init__(
        self, message: str, *, status: int | None = None, field: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.kind = kind


class TansakuClient:
    """Search and rerank against a running ``tansaku serve`` (thread-safe: one httpx pool).

    >>> client = TansakuClient("http://127.0.0.1:8080")          # doctest: +SKIP
    >>> client.search("富士山の高さ", top_n=3)                      # doctest: +SKIP
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"url must be an http:// or https:// address of a tansaku server, got {url!r}")
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        return f"TansakuClient({self.url!r})"

    def search(
        self,
        query: str,
        *,
        top_n: int | None = None,
        retrieve_k: int | None = None,
        rerank_k: int | None = None,
        mode: str | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """``POST /v1/search``: ranked hits with title, text and metadata.

        Unset (None) settings are left out, so the server's defaults apply; ``filter`` is sent
        only when given.
        """
        body: dict[str, Any] = {
            "query": query,
            "top_n": top_n,
            "retrieve_k": retrieve_k,
            "rerank_k": rerank_k,
            "mode": mode,
        }
        if filter is not None:
            if not isinstance(filter, Mapping):
                raise ConfigError(
                    f"filter must be a JSON object (a dict such as {{'lang': 'ja'}}) "
                    f"to send to the server, got {type(filter).__name__}"
                )
            body["filter"] = dict(filter)
        data = self._post("/v1/search", {k: v for k, v in body.items() if v is not None})
        return [
            Hit(
                doc_id=h["id"],
                score=float(h["score"]),
                rank=int(h["rank"]),
                stage=h["stage"],
                title=h.get("title"),
                text=h.get("text"),
                metadata=h.get("metadata") or {},
            )
            for h in data["hits"]
        ]

    def rerank(
        self, query: str, documents: Sequence[str], *, top_n: int | None = None, model: str | None = None
    ) -> list[tuple[int, float]]:
        """``POST /v1/rerank``: ``(request index, score in [0, 1])`` pairs, best first."""
        body: dict[str, Any] = {"query": query, "documents": list(documents)}
        if top_n is not None:
            body["top_n"] = top_n
        if model:
            body["model"] = model
        data = self._post("/v1/rerank", body)
        return [(int(r["index"]), float(r["relevance_score"])) for r in data["results"]]

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            response = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach the tansaku server at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _remote_error(response, f"{self.url}{path}")
        return response.json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TansakuClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remote_error(response: httpx.Response, where: str) -> RemoteError:
    """The server's ``{"error": {"message", "type", "field"}}`` as a RemoteError."""
    try:
        error = response.json().get("error")
    except ValueError:  # not JSON: a proxy's page, say
        error = None
    if not isinstance(error, dict):
        return RemoteError(
            f"{where} answered HTTP {response.status_code}: {response.text[:200]}",
            status=response.status_code,
        )
    return RemoteError(
        f"{where} answered HTTP {response.status_code}: {error.get('message')}",
        status=response.status_code,
        field=error.get("field"),
        kind=error.get("type"),
    )
