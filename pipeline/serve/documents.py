"""The texts a rerank request ranks, and the documents its results return."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import ApiError


def document_texts(documents: Sequence[Any], rank_fields: Sequence[str] | None) -> list[str]:
    """The text to rank for each request document.

    A string is its own text. An object is ranked on its ``text`` field, or, with
    ``rank_fields``, on those fields as ``"name: value"`` lines in ``rank_fields`` order
    (absent or null fields skipped; values must be strings or numbers), as Cohere v1 did.
    """
    return [_document_text(i, doc, rank_fields) for i, doc in enumerate(documents)]


def _document_text(i: int, doc: Any, rank_fields: Sequence[str] | None) -> str:
    where = f"documents[{i}]"
    if isinstance(doc, str):
        return doc
    if not isinstance(doc, dict):
        raise ApiError(
            422,
            f"{where} must be a string or an object with a 'text' field, got {_json_type(doc)}",
            field=where,
        )
    if rank_fields:
        lines = []
        for name in rank_fields:
            value = doc.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ApiError(
                    422,
                    f"{where}.{name} must be a string or a number to rank on, got {_json_type(value)}",
                    field=f"{where}.{name}",
                )
            lines.append(f"{name}: {value}")
        if not lines:
            raise ApiError(422, f"{where} has none of the rank_fields {list(rank_fields)}", field=where)
        return "\n".join(lines)
    text = doc.get("text")
    if not isinstance(text, str):
        problem = "has no 'text' field" if text is None else f"'text' is {_json_type(text)}"
        raise ApiError(
            422,
            f"{where} {problem}; documents need a string 'text' (or use rank_fields)",
            field=f"{where}.text",
        )
    return text


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def returned_document(original: Any, text: str) -> dict[str, Any]:
    """What ``return_documents`` gives back for one request document."""
    # objects come back with all their fields (Cohere v1); "text" is always a string
    if isinstance(original, dict):
        out = dict(original)
        if not isinstance(out.get("text"), str):
            out["text"] = text
        return out
    return {"text": original}
