"""(query, document) pairs to model inputs, built exactly as the reranker builds them at search time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tansaku.index.errors import ConfigError
from tansaku.rerank.training.examples import TrainExample
from tansaku.rerank.windows import PairTemplate


def wants_token_types(tokenizer: Any, model: Any, template: PairTemplate) -> bool:
    """Whether inputs carry segment ids; the same rule as ``CrossEncoderReranker``."""
    import inspect

    if template.types is None or "token_type_ids" not in inspect.signature(model.forward).parameters:
        return False
    segments = getattr(model.config, "type_vocab_size", 0)
    return "token_type_ids" in getattr(tokenizer, "model_input_names", ()) or (
        isinstance(segments, int) and segments > 1
    )


class PairEncoder:
    """(query, document) -> model features, as the reranker builds them at search time.

    A pair longer than ``max_length`` keeps the document's first window: the query is cut
    to half the room when it needs more, the document to what is left.
    """

    def __init__(self, tokenizer: Any, model: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.template = PairTemplate.from_tokenizer(tokenizer)
        self.token_types = wants_token_types(tokenizer, model, self.template)
        self.room = max_length - self.template.num_special
        if self.room < 2:
            raise ConfigError(f"max_length={max_length} leaves no room for a query and a document")
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else getattr(model.config, "pad_token_id", 0) or 0)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)
        return [list(x) for x in encoded["input_ids"]]

    def features(self, query_ids: list[int], doc_ids: list[int]) -> dict[str, list[int]]:
        if len(query_ids) + len(doc_ids) > self.room:
            query_ids = query_ids[: max(1, self.room // 2)]
            doc_ids = doc_ids[: self.room - len(query_ids)]
        return self.template.build(query_ids, doc_ids, token_types=self.token_types)

    def units(self, groups: Sequence[TrainExample]) -> list[dict[str, list[int]]]:
        """Features of every (query, text) of ``groups``, positive first in each group."""
        units = []
        for group in groups:
            query_ids = self.ids([group.query])[0]
            for doc_ids in self.ids([group.positive, *group.negatives]):
                units.append(self.features(query_ids, doc_ids))
        return units

    def collate(self, units: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Pad ``units`` the way the tokenizer would (its pad id and padding side)."""
        width = max(len(u["input_ids"]) for u in units)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
        if self.token_types:
            out["token_type_ids"] = []
        for unit in units:
            pad = width - len(unit["input_ids"])
            rows = {
                "input_ids": (unit["input_ids"], self.pad_id),
                "attention_mask": ([1] * len(unit["input_ids"]), 0),
            }
            if self.token_types:
                rows["token_type_ids"] = (unit["token_type_ids"], 0)
            for key, (values, fill) in rows.items():
                out[key].append([fill] * pad + values if left else values + [fill] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}

    def batch(self, groups: Sequence[TrainExample]) -> dict[str, torch.Tensor]:
        """One padded batch of every pair of ``groups``."""
        return self.collate(self.units(groups))

    def logits(self, model: Any, groups: Sequence[TrainExample], micro_batch: int) -> torch.Tensor:
        """One logit per pair of ``groups`` (input order), forwarded in length-sorted micro-batches.

        Short documents never pad up to long ones: on CPU padding is pure waste.
        """
        units = self.units(groups)
        order = sorted(range(len(units)), key=lambda i: len(units[i]["input_ids"]))
        outputs = []
        for start in range(0, len(order), micro_batch):
            chunk = order[start : start + micro_batch]
            outputs.append(model(**self.collate([units[i] for i in chunk])).logits[:, 0])
        position = torch.empty(len(units), dtype=torch.long)
        position[torch.tensor(order)] = torch.arange(len(units))
        return torch.cat(outputs)[position]
