"""Token-budget packing: every batch keeps to the padding bound and the budget, and the
out-of-memory back-off and per-item failures still work through it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lychee.backends.base import run_batched
from lychee.backends.packing import (
    DEFAULT_CACHE_BYTES,
    MAX_PADDING,
    Budget,
    cpu_cache_bytes,
    fits,
    pack,
    padded_tokens,
    tokens_for_cache,
    tokens_for_memory,
)

PROMPT = 100  # text tokens around the image in every row
# The mixed set's rows under the model card's budget: 640x480, 300x900, 1024x768, 1920x1080.
MIXED = [PROMPT + tokens for tokens in (391, 352, 999, 1222)]

lengths_strategy = st.lists(st.integers(1, 5000), max_size=60)
budget_strategy = st.builds(Budget, rows=st.integers(1, 40), tokens=st.integers(1, 50_000),
                            max_padding=st.sampled_from([0.0, 0.05, MAX_PADDING, 0.5]))


@given(lengths_strategy, budget_strategy)
def test_every_row_lands_in_exactly_one_batch(lengths, budget):
    batches = pack(lengths, budget)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))


@given(lengths_strategy, budget_strategy)
def test_every_batch_of_several_rows_keeps_the_padding_bound_and_the_budget(lengths, budget):
    for batch in pack(lengths, budget):
        rows = [lengths[i] for i in batch]
        if len(rows) > 1:
            assert padded_tokens(rows) <= budget.max_padding * sum(rows)
            assert len(rows) * max(rows) <= budget.tokens
            assert len(rows) <= budget.rows


@given(lengths_strategy, budget_strategy)
def test_batches_come_longest_first_and_none_could_have_taken_the_next_row(lengths, budget):
    batches = pack(lengths, budget)
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat, reverse=True)
    for batch, following in zip(batches, batches[1:]):
        assert not fits([lengths[i] for i in batch] + [lengths[following[0]]], budget)


def test_a_small_image_is_never_padded_to_a_long_one():
    lengths = MIXED * 4  # 16 images, four of each size, as the benchmark's
    for batch in pack(lengths, Budget(rows=8)):
        rows = {lengths[i] for i in batch}
        assert max(rows) < PROMPT + 500 or min(rows) > PROMPT + 900  # small and 1080p never together
        assert padded_tokens([lengths[i] for i in batch]) <= MAX_PADDING * sum(lengths[i] for i in batch)
    assert pack([PROMPT + 340, PROMPT + 1230], Budget(rows=8)) == [[1], [0]]


def test_a_row_longer_than_the_budget_goes_alone():
    assert pack([5000, 90, 100], Budget(tokens=1000)) == [[0], [2, 1]]


def test_rows_of_one_length_fill_batches_to_the_token_budget():
    """Many same-size copies of one image (an explanation's) batch by the budget alone."""
    batches = pack([1322] * 20, Budget(rows=32, tokens=6000))
    assert [len(batch) for batch in batches] == [4, 4, 4, 4, 4]
    assert [i for batch in batches for i in batch] == list(range(20))  # equal rows keep their order


def test_halving_a_budget_keeps_at_least_one_row_and_one_token():
    assert Budget(rows=8, tokens=1000).halved() == Budget(rows=4, tokens=500)
    assert Budget(rows=1, tokens=1).halved() == Budget(rows=1, tokens=1)
    with pytest.raises(ValueError, match="rows >= 1"):
        Budget(rows=0)


def test_the_memory_budget_is_half_the_free_memory_in_tokens():
    assert tokens_for_memory(80 * 2**30, 2**20) == 40 * 2**10
    assert tokens_for_memory(0, 2**20) == 1


def test_the_cache_budget_is_the_tokens_whose_activation_fits_in_the_cache():
    assert tokens_for_cache(2 * 2**20, 2048) == 1024
    assert tokens_for_cache(1000, 2048) == 1


def test_the_cache_size_is_read_from_sysfs_and_defaults_when_missing(tmp_path):
    for index, (level, size) in enumerate([("1", "48K"), ("1", "32K"), ("2", "2048K"), ("3", "32768K")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(level + "\n")
        (folder / "size").write_text(size + "\n")
    assert cpu_cache_bytes(tmp_path) == 2 * 2**20
    assert cpu_cache_bytes(tmp_path / "missing") == DEFAULT_CACHE_BYTES


def test_run_batched_packs_by_cost_and_restores_input_order():
    seen = []
    results = run_batched([300, 100, 310, 95], lambda b: seen.append(list(b)) or [x * 10 for x in b],
                          budget=Budget(rows=4), cost=lambda x: x)
    assert seen == [[310, 300], [100, 95]]
    assert results == [3000, 1000, 3100, 950]


def test_out_of_memory_halves_the_budget_and_packs_the_rest_again():
    calls = []

    def fn(batch):
        calls.append(len(batch))
        if len(batch) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        if 13 in batch:
            raise ValueError("bad item 13")
        return [x * 2 for x in batch]

    progress = []
    results = run_batched(list(range(10, 16)), fn, budget=Budget(rows=8),
                          out_of_memory=lambda e: "out of memory" in str(e),
                          progress=lambda done, total: progress.append((done, total)))
    assert calls[:3] == [6, 3, 1]  # 6 rows fail, then 3, then one at a time
    assert results[:3] == [20, 22, 24] and results[4:] == [28, 30]
    assert isinstance(results[3], ValueError)  # the failing item alone, the others scored
    assert progress[-1] == (6, 6) and progress == sorted(progress)


def test_out_of_memory_on_a_single_row_is_that_rows_error():
    def fn(batch):
        if max(batch) > 50:
            raise RuntimeError("CUDA out of memory")
        return list(batch)

    results = run_batched([10, 99, 20], fn, budget=Budget(rows=4), cost=lambda x: x,
                          out_of_memory=lambda e: "out of memory" in str(e))
    assert results[0] == 10 and results[2] == 20
    assert isinstance(results[1], RuntimeError)
