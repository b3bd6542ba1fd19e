"""How a Ray build runs: the cluster's address and the sizes of its pools (no Ray import here)."""

from __future__ import annotations

from dataclasses import dataclass

from tansaku.index.checks import check_int, check_optional_int

ROWS_PER_BLOCK = 1024  # records per read block and per tokenising call: MeCab's time dwarfs Ray's


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray build runs.

    ``address``: the cluster (None: the one this process joined, else a new local one;
    "auto"; "ray://host:10001"; "host:6379"). ``tokenize_actors``/``encode_actors``: the
    pools' sizes (None: up to the cluster's CPUs, or its GPUs for a GPU encoder).
    ``block_rows``: records per read block and per tokenising call.
    """

    address: str | None = None
    tokenize_actors: int | None = None
    encode_actors: int | None = None
    block_rows: int = ROWS_PER_BLOCK

    def __post_init__(self) -> None:
        check_optional_int("tokenize_actors", self.tokenize_actors)
        check_optional_int("encode_actors", self.encode_actors)
        check_int("block_rows", self.block_rows)
