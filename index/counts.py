"""Term-frequency matrices of updated documents: kept rows of an index plus new documents."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .bm25 import BM25Index


def merged_counts(
    old: BM25Index | None, reuse: np.ndarray, is_new: np.ndarray, new_tokens: list[list[str]]
) -> tuple[sp.csr_matrix, list[str], np.ndarray]:
    """Documents × terms frequencies of kept documents (rows ``reuse`` of ``old``) and the new
    documents' tokens, in corpus order; with the vocabulary and document lengths."""
    vocab = list(old.vocab) if old is not None else []
    term_id = dict(old.term_ids) if old is not None else {}
    indptr = [0]
    terms: list[int] = []
    counts: list[int] = []
    for tokens in new_tokens:
        tally: dict[int, int] = {}
        for token in tokens:
            t = term_id.get(token)
            if t is None:
                t = term_id[token] = len(vocab)
                vocab.append(token)
            tally[t] = tally.get(t, 0) + 1
        terms.extend(tally)
        counts.extend(tally.values())
        indptr.append(len(terms))
    new_rows = sp.csr_matrix(
        (np.asarray(counts, np.int32), np.asarray(terms, np.int32), np.asarray(indptr, np.int64)),
        shape=(len(new_tokens), len(vocab)),
    )
    if old is not None:
        kept = old.doc_term()[reuse[~is_new]]
        kept = sp.csr_matrix((kept.data, kept.indices, kept.indptr), shape=(kept.shape[0], len(vocab)))
    else:
        kept = sp.csr_matrix((0, len(vocab)), dtype=np.int32)
    # Stack kept rows then new rows, and put them back in corpus (rowid) order.
    stacked = sp.vstack([kept, new_rows], format="csr")
    order = np.empty(len(reuse), dtype=np.int64)
    order[~is_new] = np.arange(int((~is_new).sum()))
    order[is_new] = int((~is_new).sum()) + np.arange(int(is_new.sum()))
    by_doc = stacked[order]
    return by_doc, vocab, np.asarray(by_doc.sum(axis=1)).ravel().astype(np.int32)
