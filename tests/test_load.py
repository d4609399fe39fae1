"""Bounded load test: the demo served on 127.0.0.1 with the tiny checkpoint and a one-slot
queue, hit by concurrent ``gradio_client`` clients for a few rounds (benchmarks/load_test.py
is the same machinery with bigger numbers)."""

from __future__ import annotations

import io
import os
from unittest import mock

import pytest

from benchmarks.load_test import Outcome, expected_results, image_sets, load_test, one_request, serve_app

pytestmark = pytest.mark.timeout(300)

CLIENTS, ROUNDS, REQUESTS, IMAGES = 6, 3, 2, 2
QUEUE_SIZE = 1
TIMEOUT_S = 60.0
MEMORY_GROWTH_MB = 60  # between the first and the last round; the first round warms the allocator


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    # Served as the README advises for a long-running server: without it glibc's per-thread
    # arenas add tens of MB in the first rounds (benchmarks/README.md), which made this flaky.
    with mock.patch.dict(os.environ, {"MALLOC_ARENA_MAX": "2"}), \
            serve_app(tiny_checkpoint, queue_size=QUEUE_SIZE) as running:
        yield running


@pytest.fixture(scope="module")
def before(server):
    """One request and its answer, taken before any load."""
    [images] = image_sets(1, IMAGES)
    return images, expected_results(server.url, [images], TIMEOUT_S)[0]


@pytest.fixture(scope="module")
def rounds(server, before):
    return load_test(server.url, pid=server.pid, clients=CLIENTS, rounds=ROUNDS, requests=REQUESTS, images=IMAGES,
                     timeout_s=TIMEOUT_S, out=io.StringIO())


def outcomes(rounds) -> list[Outcome]:
    return [o for r in rounds for o in r.outcomes]


def test_every_request_is_answered_correctly_or_refused_as_busy(rounds):
    everything = outcomes(rounds)
    assert len(everything) == CLIENTS * REQUESTS * ROUNDS
    assert {o.kind for o in everything} <= {"ok", "busy"}, [o.detail for o in everything if o.kind != "ok"]
    assert any(o.kind == "ok" for o in everything)


def test_requests_beyond_the_queue_get_a_clear_busy_error_without_waiting(rounds):
    busy = [o for o in outcomes(rounds) if o.kind == "busy"]
    assert busy, "the one-slot queue never filled"
    assert all("Queue is full" in o.detail for o in busy)
    assert max(o.latency_s for o in busy) < TIMEOUT_S / 4


def test_server_memory_stays_flat_across_rounds(rounds):
    first, last = rounds[0].rss_mb, rounds[-1].rss_mb
    assert last - first < MEMORY_GROWTH_MB, [r.rss_mb for r in rounds]


def test_the_server_still_answers_the_same_after_the_load(server, before, rounds):
    from gradio_client import Client

    images, expected = before
    client = Client(server.url, verbose=False)
    assert one_request(client, images, expected, TIMEOUT_S).kind == "ok"
    client.close()
