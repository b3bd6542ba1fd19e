"""Request and response models of ``tansaku serve`` (pydantic; they also make the OpenAPI docs).

Requests are strict: unknown fields are rejected (so a typo such as ``top_k`` for ``top_n`` is
a 422 naming it rather than being silently ignored), integers must be JSON integers and
booleans JSON booleans; only TEI's body ignores unknown fields, as TEI does (its clients send
``model`` and ``top_n``). Checks that need the loaded models or the server's limits (model name,
document count, a document's text) happen in :mod:`tansaku.pipeline.serve`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, Tag, field_validator

PositiveInt = Annotated[int, Field(strict=True, ge=1)]

_DOCUMENT_SCHEMA: dict[str, Any] = {
    "items": {
        "anyOf": [
            {"type": "string"},
            {"type": "object", "properties": {"text": {"type": "string"}}, "additionalProperties": True},
        ]
    }
}


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests ------------------------------------------------------------------------------------


class CohereRerankRequest(_Strict):
    """A Cohere v1/v2 rerank request (also what Jina, LocalAI and Infinity clients send).

    ``documents`` are strings or objects; an object is ranked on its ``text`` field, or with
    ``rank_fields`` on those fields joined as ``"name: value"`` lines in ``rank_fields`` order.
    """

    model: str | None = Field(None, description="must name the loaded reranker when given")
    query: str = Field(..., min_length=1, description="the search query")
    documents: list[Any] = Field(
        ...,
        min_length=1,
        json_schema_extra=_DOCUMENT_SCHEMA,
        description="strings, or objects with a 'text' field",
    )
    top_n: PositiveInt | None = Field(None, description="results to return (default: all)")
    rank_fields: list[str] | None = Field(
        None, min_length=1, description="object fields to rank on, joined as 'name: value' lines"
    )
    return_documents: StrictBool | None = Field(
        None, description="include each document in its result (default: false)"
    )
    max_chunks_per_doc: PositiveInt | None = Field(
        None,
        description="at most this many token windows scored per long document "
        "(capped at the server's --max-chunks-per-doc)",
    )
    max_tokens_per_doc: PositiveInt | None = Field(
        None, description="truncate each document to its first N tokens before scoring"
    )
    raw_scores: StrictBool | None = Field(
        None,
        description="also return each result's logit as raw_score (relevance_score stays "
        "the sigmoid score in [0, 1])",
    )
    priority: int | None = Field(None, description="accepted for Cohere v2 and ignored (one queue)")
    relevant_spans: dict[str, Any] | None = Field(
        None, description="Cohere v2; only {'mode': 'disabled'} is supported"
    )

    query_not_blank = field_validator("query")(_not_blank)


class TEIRerankRequest(BaseModel):
    """A Text Embeddings Inference ``POST /rerank`` body (told apart by ``texts``).

    As TEI itself does, fields it does not know are ignored (clients send ``model`` and
    ``top_n``); the fields it knows are checked as strictly as everywhere else.
    """

    model_config = ConfigDict(extra="ignore")

    query: str = Field(..., min_length=1)
    texts: list[str] = Field(..., min_length=1)
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = Field(
        None,
        description="true: score only one window of each text (max-length tokens): its first, "
        "or with truncation_direction 'Left' its last; false/absent: long texts are scored as "
        "their best window",
    )
    truncation_direction: Literal["Right", "Left"] = Field(
        "Right", description="with truncate: 'Right' keeps each text's start, 'Left' its end"
    )
    top_n: PositiveInt | None = Field(
        None, description="not TEI's own: the array is cut to the best top_n when given"
    )
    model: str | None = Field(
        None, description="ignored, as TEI does (checked only with --strict-model-name)"
    )

    query_not_blank = field_validator("query")(_not_blank)


class SearchRequest(_Strict):
    """``POST /v1/search``: the full retrieve (+ rerank) pipeline over the loaded index."""

    query: str = Field(..., min_length=1)
    top_n: PositiveInt | None = Field(None, description="hits to return (server default: 10)")
    retrieve_k: PositiveInt | None = Field(None, description="first-stage candidates")
    rerank_k: PositiveInt | None = Field(None, description="candidates passed to the reranker")
    mode: Literal["bm25", "dense", "hybrid"] | None = Field(
        None, description="first stage (default: hybrid if the index has a dense part, else bm25)"
    )
    filter: dict[str, Any] | None = Field(
        None,
        description="metadata filter applied before every stage's top-k, e.g. "
        '{"lang": "ja", "year": {"$gte": 2020}}: $eq $ne $gt $gte $lt $lte '
        "$in $nin $exists $and $or $not; on list fields any element may match",
    )

    query_not_blank = field_validator("query")(_not_blank)


# -- responses (documentation; handlers build the JSON themselves) -------------------------------


class RerankDocument(BaseModel):
    """The document as sent (objects keep all their fields)."""

    model_config = ConfigDict(extra="allow")
    text: str


class RerankResult(BaseModel):
    index: int = Field(..., description="position of the document in the request")
    relevance_score: float = Field(..., description="sigmoid score in [0, 1], never a logit")
    raw_score: float | None = Field(None, description="the logit; only present when raw_scores is true")
    document: RerankDocument | None = Field(
        None, description="only present when return_documents is true (absent, not null, else)"
    )


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int


class RerankMeta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: dict[str, int]
    warnings: list[str] | None = None


class Usage(BaseModel):
    total_tokens: int
    prompt_tokens: int


class RerankResponse(BaseModel):
    """Cohere's response shape, plus Jina/LocalAI's ``usage`` and ``model``."""

    id: str
    results: list[RerankResult]
    meta: RerankMeta
    usage: Usage
    model: str


class TEIRerankResult(BaseModel):
    index: int
    score: float
    text: str | None = Field(None, description="only present when return_text is true")


class SearchHit(BaseModel):
    id: str
    title: str | None
    text: str | None
    score: float
    rank: int
    stage: str
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    query: str
    mode: str
    model: str | None
    hits: list[SearchHit]
    timings_ms: dict[str, float]
    counts: dict[str, int]
    warnings: list[str] = Field(
        default_factory=list,
        description="what may be wrong with the request, e.g. a filter field no document has",
    )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    type: str
    source: str
    max_length: int | None = None


class IndexInfo(BaseModel):
    path: str
    documents: int
    dense: bool


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    index: IndexInfo | None


class Health(BaseModel):
    status: Literal["ok"]
    reranker: str | None
    index: bool
    documents: int | None
    in_flight: int
    uptime_s: float


class ErrorInfo(BaseModel):
    message: str
    type: str
    field: str | None


class ErrorResponse(BaseModel):
    """Every error: ``error`` names the field at fault; ``detail`` is FastAPI's, kept for clients."""

    error: ErrorInfo
    detail: Any = None


# -- the two bodies POST /rerank accepts -----------------------------------------------------------


def _rerank_shape(body: Any) -> str:
    # TEI sends "texts", Cohere/Jina send "documents"; anything else is validated (and
    # reported) as a Cohere body, the common case
    return "tei" if isinstance(body, dict) and "texts" in body else "cohere"


AnyRerankRequest = Annotated[
    Annotated[CohereRerankRequest, Tag("cohere")] | Annotated[TEIRerankRequest, Tag("tei")],
    Discriminator(_rerank_shape),
]
"""``POST /rerank``: a TEI body when it has ``texts``, else a Cohere body."""

UNION_TAGS = frozenset({"cohere", "tei"})


# -- Infinity's answer (POST /infinity/rerank) -------------------------------------------------------


class InfinityRerankResult(BaseModel):
    index: int
    relevance_score: float = Field(..., description="sigmoid score in [0, 1]")
    raw_score: float | None = Field(None, description="the logit; only present when raw_scores is true")
    document: str | None = Field(
        None, description="the ranked text; only present when return_documents is true"
    )


class InfinityRerankResponse(BaseModel):
    """Infinity's response shape: like Cohere's, but ``document`` is a plain string."""

    object: Literal["rerank"] = "rerank"
    id: str
    created: int
    model: str
    results: list[InfinityRerankResult]
    usage: Usage
