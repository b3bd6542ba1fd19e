"""Benchmark datasets as (corpus, queries, qrels): JSQuAD retrieval."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tansaku.index.errors import IngestError

SEP = " [SEP] "


@dataclass(frozen=True)
class RetrievalDataset:
    """A corpus of documents, queries and graded relevance judgements (qrels)."""

    name: str
    corpus: list[dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    groups: dict[str, str] = field(default_factory=dict)  # doc id -> article, for splits


def load_jsquad(path: str | os.PathLike[str]) -> RetrievalDataset:
    """JSQuAD (JGLUE) as retrieval: corpus = distinct paragraphs, query = question.

    A paragraph's context is "title [SEP] text"; it becomes a document with that
    title and text. Each question's single relevant document is its paragraph.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)["data"]
    except (OSError, ValueError, KeyError) as exc:
        raise IngestError(f"not a JSQuAD/SQuAD json file: {exc}", source=str(path)) from exc
    corpus: list[dict[str, str]] = []
    doc_of_context: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    groups: dict[str, str] = {}
    for article_no, article in enumerate(data):
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            doc_id = doc_of_context.get(context)
            if doc_id is None:
                doc_id = f"jsquad-{len(corpus):05d}"
                doc_of_context[context] = doc_id
                title, _, text = context.partition(SEP)
                if not text:
                    title, text = "", context
                corpus.append({"id": doc_id, "title": title.strip(), "text": text.strip()})
                groups[doc_id] = str(article.get("title", article_no))
            for qa in paragraph["qas"]:
                if qa.get("is_impossible"):
                    continue
                queries[str(qa["id"])] = qa["question"]
                qrels[str(qa["id"])] = {doc_id: 1}
    return RetrievalDataset("jsquad", corpus, queries, qrels, groups)


@dataclass(frozen=True)
class RerankDataset:
    """JQaRA-style data: each query comes with its own candidate passages and 0/1 labels."""

    name: str
    queries: dict[str, str]
    candidates: dict[str, list[dict[str, str]]]
    qrels: dict[str, dict[str, int]]


def load_candidates(
    path: str | os.PathLike[str],
    *,
    qid_field: str = "q_id",
    query_field: str = "question",
    doc_id_field: str = "passage_row_id",
    label_field: str = "label",
) -> RerankDataset:
    """Rows of (query id, query, passage id, title, text, label) from JSONL/CSV/TSV.

    These are JQaRA's column names; every row is one candidate of its query.
    """
    from tansaku.index.records import FieldMap, read_file

    fields = FieldMap(id=doc_id_field, text="text", title="title")
    queries: dict[str, str] = {}
    candidates: dict[str, list[dict[str, str]]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for rec in read_file(path, fields):
        meta = rec.metadata
        where = rec.origin
        for name in (qid_field, query_field, label_field):
            if name not in meta:
                raise IngestError("missing", source=where, field=name)
        qid = str(meta[qid_field])
        try:
            label = int(meta[label_field])
        except (TypeError, ValueError):
            raise IngestError(
                f"label must be an integer, got {meta[label_field]!r}", source=where, field=label_field
            ) from None
        queries[qid] = str(meta[query_field])
        candidates.setdefault(qid, []).append({"id": rec.id, "title": rec.title, "text": rec.text})
        qrels.setdefault(qid, {})[rec.id] = label
    return RerankDataset(Path(path).stem, queries, candidates, qrels)
