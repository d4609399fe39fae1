"""The seam between :class:`~lychee.reranker.LycheeReranker` and the engines that score pairs.

The reranker owns everything a person sees - text cleaning, image loading and its errors,
labels, progress, ranking - and hands each backend only the chat messages of one query
(``lychee.protocol``, the same for every backend), the decoded, pre-scaled images and, for
documents that carry text, their cleaned texts. A
backend answers with one result per image, in input order: p(yes) of the lychee protocol,
or the exception that image raised, so one failing image never costs the others theirs.
A problem with the whole request (a server that is down) is raised instead.

Pure: no torch, no vllm, no network; each backend module does its own heavy imports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from PIL import Image

from ..images import fit_to_budget
from ..protocol import with_document
from .packing import Budget, pack

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[int, int], None]


@runtime_checkable
class Backend(Protocol):
    """What :class:`~lychee.reranker.LycheeReranker` needs from a scoring engine."""

    name: str          # "transformers", "vllm" or "vllm-server"
    model_id: str      # the hub id or checkpoint directory it scores with
    min_pixels: int    # the pixel budget each image is resized into (N visual tokens = N x 28 x 28 pixels)
    max_pixels: int

    def relevance(self, messages: list[dict], images: Sequence[Image.Image | None], progress: Progress | None = None,
                  query_image: Image.Image | None = None,
                  texts: Sequence[str] | None = None) -> list[float | Exception]:
        """p(yes) of each candidate under ``messages``, in input order, or the exception that candidate
        raised. The last ``{"type": "image"}`` part is the candidate; with ``query_image`` there is
        one before it, the query image, the same in every pair.

        ``texts`` (one per candidate, ``""`` for none) make the candidates documents that carry
        text: candidate ``i`` is then ``images[i]`` followed by ``texts[i]``, laid out by
        :func:`lychee.protocol.with_document`, and ``images[i]`` may be None (a text alone)."""

    def describe(self) -> dict[str, str]:
        """What scores: ``backend``, ``model``, ``device``, ``dtype``, ``attention``, ``visual_tokens``."""


def visual_tokens_range(backend: Backend) -> str:
    """The pixel budget as visual tokens per image, ``min-max`` (``4-1280`` by the model card)."""
    per_token = 28 * 28
    return f"{backend.min_pixels // per_token}-{backend.max_pixels // per_token}"


Document = tuple[Image.Image | None, str]  # a candidate as a backend scores it: its image (or None), its text


def candidate_documents(images: Sequence[Image.Image | None], texts: Sequence[str] | None) -> list[Document]:
    """(image, text) of each candidate: ``texts`` None means image candidates without text."""
    if texts is not None and len(texts) != len(images):
        raise ValueError(f"got {len(texts)} texts for {len(images)} candidates")
    pairs = list(zip(images, texts if texts is not None else [""] * len(images)))
    if any(image is None and not text for image, text in pairs):
        raise ValueError("a candidate needs an image, a text or both")
    return pairs


def document_messages(messages: list[dict], image: Image.Image | None, text: str) -> list[dict]:
    """``messages`` with one candidate document in place of the candidate image."""
    return with_document(messages, image=image is not None, text=text)


def budget_sized(backend: Backend, images: Sequence[Image.Image]) -> list[Image.Image]:
    """``images`` at the size ``backend``'s pixel budget gives them (no copy for those already at
    it, as the reranker's are): resized here, once, so no processor resizes them again."""
    return [fit_to_budget(image, (backend.min_pixels, backend.max_pixels)) for image in images]


def never(_: BaseException) -> bool:
    return False


def run_batched(items: Sequence[T], fn: Callable[[list[T]], list[Any]], *, budget: Budget,
                cost: Callable[[T], int] | None = None, progress: Progress | None = None,
                out_of_memory: Callable[[BaseException], bool] = never) -> list[Any]:
    """Apply ``fn`` to ``items`` in batches that keep to ``budget``; return results in input order.

    ``cost`` is an item's tokens (None: one each); the batches are :func:`~.packing.pack`'s,
    the longest first, so an out-of-memory error shows up at once. An error for which
    ``out_of_memory`` is true halves the budget and packs the items not yet done again; any
    other error in a batch retries its items one by one, so a failing item gets its own
    exception (returned in its slot) and the others still get results.
    """
    lengths = [cost(item) for item in items] if cost else [1] * len(items)
    results: list[Any] = [None] * len(items)
    pending = list(range(len(items)))
    done = 0
    while pending:
        chunk = [pending[i] for i in pack([lengths[i] for i in pending], budget)[0]]
        try:
            outputs = fn([items[i] for i in chunk])
        except Exception as exc:  # noqa: BLE001 - every failure becomes a per-item result
            if len(chunk) > 1 and out_of_memory(exc):
                failed = Budget(min(budget.rows, len(chunk)), min(budget.tokens, len(chunk) * lengths[chunk[0]]),
                                budget.max_padding)
                budget = failed.halved()
                log.warning("out of memory; retrying with at most %d pairs and %d tokens per batch",
                            budget.rows, budget.tokens)
                continue
            if len(chunk) > 1:
                outputs = [_one(fn, items[i]) for i in chunk]
            else:
                log.warning("item %d failed: %s", chunk[0], exc)
                outputs = [exc]
        for i, output in zip(chunk, outputs):
            results[i] = output
        done += len(chunk)
        taken = set(chunk)
        pending = [i for i in pending if i not in taken]
        if progress:
            progress(done, len(items))
    return results


def _one(fn: Callable[[list[T]], list[Any]], item: T) -> Any:
    try:
        return fn([item])[0]
    except Exception as exc:  # noqa: BLE001
        log.warning("item failed: %s", exc)
        return exc
