"""Serving :mod:`lychee.web.rest` on the app's own server, through the page's queue.

``python app.py`` serves the page, Gradio's API and ``POST /v1/rerank`` (``/rerank``, ``/v2/rerank``,
``/invocations``, and each under ``/image-urls``) from one FastAPI app: the routes go in through
``launch(app_kwargs={"routes": ...})``, so they are matched before Gradio's own. A request is read, checked
(``LYCHEE_API_KEY``, the body, the shapes) and its image URLs fetched - by the same safe fetcher and limits as
``/rerank_urls``, holding no scoring slot - in the route; then it is scored as an event of the page's queue
(``gpu``, the page's concurrency limit and ``LYCHEE_QUEUE_SIZE``; 429 when full), so a ZeroGPU Space runs it
under ``spaces.GPU`` with the caller's own request headers, as it runs the page's events. The queued event
carries only a ticket; the job itself never leaves this process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
from gradio.data_classes import PredictBodyInternal
from gradio.route_utils import API_PREFIX
from gradio.server_messages import ProcessCompletedMessage, UnexpectedErrorMessage
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .. import memory
from ..backends.tokens import token_counter
from ..images import encoded_visual_tokens, visual_tokens
from ..json_body import read_json
from ..messages import UserError
from ..ranking import ScoredImage
from ..url_images import url_label
from .api import fetch_one, with_documents
from .clients import client_key, in_parser, in_worker
from .doors import API_KEY_ENV_VAR, authorized, mark_internal
from .model_slot import ModelSlot
from .rest import (
    IMAGE_URL_PREFIX,
    PATHS,
    RestError,
    RestRequest,
    cut_to_tokens,
    document_urls_and_texts,
    parse_request,
    prompt_tokens,
    response,
)
from .service import Form, Job, RerankOutcome, accept, rerank

log = logging.getLogger(__name__)

WAIT_MARGIN_S = 60  # beyond LYCHEE_REQUEST_TIMEOUT_S: waiting in the queue and loading the model
_APIS: weakref.WeakKeyDictionary[gr.Blocks, RestApi] = weakref.WeakKeyDictionary()


@dataclass
class Ticket:
    """A job waiting for the queue, and what came of it."""

    job: Job
    outcome: RerankOutcome | None = None
    error: UserError | None = None


class RestApi:
    """The rerank routes of one app: wired into its Blocks (the queued event), served by :func:`routes`."""

    def __init__(self, slot: ModelSlot, score: Callable[[Job], list[ScoredImage]]) -> None:
        self.slot = slot
        self.limits = slot.limits
        self.score = score
        self.tickets: dict[str, Ticket] = {}

    def wire(self, blocks: gr.Blocks) -> None:
        """The queued event that scores a ticket's job; call inside ``blocks``."""
        with gr.Column(visible=False):
            ticket = gr.Textbox()
        event = gr.on([], self.run_ticket, inputs=[ticket], outputs=None, api_visibility="private",
                      concurrency_id="gpu", show_progress="hidden")
        self.fn_index = event["id"]
        mark_internal(blocks, self.fn_index)
        _APIS[blocks] = self

    def run_ticket(self, ticket: str) -> None:
        """The queued work: score the job; its outcome or refusal stays with the ticket."""
        entry = self.tickets.get(ticket)
        if entry is None:
            raise gr.Error("unknown ticket")
        try:
            entry.outcome = rerank(entry.job, self.slot, score=self.score)
        except UserError as exc:
            entry.error = exc

    async def prepare(self, request: RestRequest, client: str) -> tuple[RestRequest, Job]:
        """The request cut to its token limits, and as a web job, its URLs fetched by one deadline: the
        checks and fetcher of ``/rerank_urls``."""
        deadline = time.monotonic() + self.limits.url_timeout_s
        request = await in_worker(lambda: cut_to_tokens(request, token_counter(self.slot.get().model_id),
                                                        self.limits.max_query_chars))
        reference = None
        if request.query_image:
            reference = await fetch_one(request.query_image, self.limits, deadline=deadline, client=client)
        urls, texts = document_urls_and_texts(request.documents)
        form = Form(request.query, preset=request.preset, score_threshold=request.score_threshold,
                    top_k=request.top_n, instruction=request.instruction, query_image=reference,
                    query_image_label=url_label(request.query_image, 0) if reference is not None else None,
                    **({"tie_epsilon": request.tie_epsilon} if request.tie_epsilon is not None else {}))
        job = await in_worker(accept, form, urls, self.limits, texts=texts)
        return request, await with_documents(job, urls, self.limits, deadline=deadline, client=client)

    def answer(self, request: RestRequest, outcome: RerankOutcome) -> dict:
        """The response, its usage counted in the model's tokens."""
        backend = self.slot.get().backend
        budget, max_side = (backend.min_pixels, backend.max_pixels), outcome.request.settings.max_side

        def image_tokens(source: object) -> int:
            return encoded_visual_tokens(source, budget, max_side) if isinstance(source, bytes | bytearray) else 0

        job = outcome.job
        reference = job.request.query.image
        tokens = prompt_tokens(request, outcome.records, token_counter(backend.model_id),
                               [image_tokens(i) for i in job.images],
                               visual_tokens(reference, budget) if reference is not None else 0)
        return response(request, outcome.records, outcome.request.settings, model=self.slot.name, tokens=tokens,
                        warnings=[n.to_dict() for n in outcome.report.warnings])

    async def queued(self, http: Request, job: Job) -> RerankOutcome:
        """Score ``job`` as an event of the app's queue; :class:`RestError` 429 when the queue is full."""
        blocks = http.app.get_blocks()
        queue = blocks._queue
        name = secrets.token_hex(16)
        self.tickets[name] = entry = Ticket(job)
        session = secrets.token_hex(16)
        # Gradio's queue derives the app's root URL from the path of the request that joined it.
        joined = Request({**http.scope, "path": f"{API_PREFIX}/queue/join", "raw_path": None}, http.receive)
        try:
            body = PredictBodyInternal(session_hash=session, data=[name], fn_index=self.fn_index, request=joined)
            accepted, detail, state = await queue.push(body=body, request=joined, username=None)
            if not accepted:
                if state == "queue_full":
                    raise RestError(429, "rest_queue_full", size=self.limits.queue_size)
                raise RestError(503, "rest_queue_refused", reason=str(detail)[:200])
            messages = queue.pending_messages_per_session[session]
            deadline = time.monotonic() + self.limits.request_timeout_s + WAIT_MARGIN_S
            while True:
                try:
                    message = await asyncio.wait_for(messages.get(), timeout=max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    await queue.clean_events(session_hash=session)
                    raise RestError(503, "timeout", seconds=self.limits.request_timeout_s) from None
                if isinstance(message, ProcessCompletedMessage | UnexpectedErrorMessage):
                    break
            if entry.error is not None:
                raise entry.error
            if entry.outcome is None:
                raise RestError(500, "rest_failed", reason=json.dumps(getattr(message, "output", ""))[:300])
            return entry.outcome
        finally:
            self.tickets.pop(name, None)
            queue.pending_messages_per_session.pop(session, None)
            queue.pending_event_ids_session.pop(session, None)

    async def endpoint(self, http: Request) -> JSONResponse:
        """Answer one rerank request in its dialect, or refuse it with a JSON error."""
        try:
            if not authorized(dict(http.scope["headers"]), os.environ.get(API_KEY_ENV_VAR)):
                raise RestError(401, "rest_unauthorized")
            # Read off the server's loop, the values counted before they are built (lychee.json_body).
            body = await in_parser(read_json, await http.body(), max_documents=self.limits.max_images)
            request = parse_request(body, image_strings=http.url.path.startswith(IMAGE_URL_PREFIX))
            request, job = await self.prepare(
                request, client_key(http.headers, http.client.host if http.client else None))
            outcome = await self.queued(http, job)
            return JSONResponse(await in_worker(self.answer, request, outcome))
        except UserError as exc:
            log.info("refused rerank request: %s", exc)
            error = RestError.refusing(exc)
            return JSONResponse(error.body(), status_code=error.status)
        except RestError as exc:
            log.info("refused rerank request: %s", exc)
            return JSONResponse(exc.body(), status_code=exc.status)
        finally:
            memory.release_soon()  # a body of up to LYCHEE_MAX_REQUEST_BYTES, parsed, leaves the heap


async def _endpoint(http: Request) -> JSONResponse:
    api = _APIS.get(http.app.get_blocks())
    if api is None:
        return JSONResponse(RestError(404, "rest_not_wired").body(), status_code=404)
    return await api.endpoint(http)


def routes() -> list[Route]:
    """The rerank routes, for ``launch(app_kwargs={"routes": routes()})``."""
    return [Route(prefix + path, _endpoint, methods=["POST"]) for prefix in ("", IMAGE_URL_PREFIX) for path in PATHS]
