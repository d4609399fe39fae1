"""Token-budget packing: which pairs share a forward pass.

A batch of rows of different lengths is padded to its longest row, and the padding is computed
like real tokens. Grouping by a fixed count pads a 340-token image to 1,230 tokens next to a
1080p photo; grouping by tokens does not. Every batch :func:`pack` returns keeps

- its padded tokens (``rows x longest - real``) at most ``max_padding`` of its real tokens, and
- its padded size (``rows x longest``) within ``tokens``, and its rows within ``rows``,

except that a row alone is always a batch, however long. The same rule serves every kind of
row - a candidate image after a text or image query, a text document, the many same-size
copies of one image an explanation scores - since it sees only each row's token count.

Pure: no torch; the budgets come from numbers the caller measures (free accelerator memory,
the CPU's cache size).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_PADDING = 0.10           # padded tokens per real token of a batch, at most
MAX_ROWS = 32                # beyond this a GPU gains little and progress updates get coarse
USABLE_FREE_MEMORY = 0.5     # of the free GPU memory, for the estimate's error and the allocator's slack
DEFAULT_CACHE_BYTES = 2**20  # a per-core L2 cache, when the system does not say
UNLIMITED = sys.maxsize


@dataclass(frozen=True)
class Budget:
    """The most a batch may hold: ``rows`` pairs, ``tokens`` padded tokens, ``max_padding`` waste."""

    rows: int = MAX_ROWS
    tokens: int = UNLIMITED
    max_padding: float = MAX_PADDING

    def __post_init__(self) -> None:
        if self.rows < 1 or self.tokens < 1 or self.max_padding < 0:
            raise ValueError(f"a budget needs rows >= 1, tokens >= 1 and max_padding >= 0, got {self}")

    def halved(self) -> Budget:
        """Half the rows and tokens (at least one row): the retry after running out of memory."""
        return Budget(max(1, self.rows // 2), max(1, self.tokens // 2), self.max_padding)


def padded_tokens(lengths: Sequence[int]) -> int:
    """Padding tokens when rows of ``lengths`` tokens are padded to the longest."""
    return len(lengths) * max(lengths, default=0) - sum(lengths)


def fits(lengths: Sequence[int], budget: Budget) -> bool:
    """Whether rows of ``lengths`` tokens may share one forward pass under ``budget``."""
    if len(lengths) <= 1:
        return True
    return (len(lengths) <= budget.rows and len(lengths) * max(lengths) <= budget.tokens
            and padded_tokens(lengths) <= budget.max_padding * sum(lengths))


def pack(lengths: Sequence[int], budget: Budget) -> list[list[int]]:
    """Indices of ``lengths`` in batches that each :func:`fits` ``budget``, longest rows first.

    Rows are taken longest first (equal lengths in input order) and each joins the open batch
    while the batch still fits, else opens the next one: a row shorter than the open batch's
    longest can only add padding, so no later row would fit either. The largest batch comes
    first, so running out of memory shows at once.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and fits([lengths[j] for j in batches[-1]] + [lengths[i]], budget):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def tokens_for_memory(free_bytes: int, token_bytes: int, *, usable: float = USABLE_FREE_MEMORY) -> int:
    """Padded tokens per batch whose activations fit in ``usable`` of ``free_bytes`` (at least 1)."""
    return max(1, int(free_bytes * usable) // token_bytes)


def tokens_for_cache(cache_bytes: int, token_bytes: int) -> int:
    """Padded tokens per batch whose widest activation fits in ``cache_bytes`` (at least 1).

    On a CPU, a batch gains over single rows only while its matrices are small enough that
    per-call overhead matters; once a layer's activations outgrow the core's cache, a longer
    batch runs no faster per token, and padding it costs the full price.
    """
    return max(1, cache_bytes // token_bytes)


def cpu_cache_bytes(root: str | os.PathLike = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """The size of the first CPU's level-2 cache, from Linux's sysfs; 1 MiB when it says nothing."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    for index in sorted(Path(root).glob("index*")):
        try:
            if (index / "level").read_text().strip() != "2":
                continue
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "")
        if number.isdecimal():
            return int(number) * units.get(unit, 1)
    return DEFAULT_CACHE_BYTES
