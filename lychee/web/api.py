"""The web demo's API routes: ``/rerank`` (uploaded files, for ``gradio_client``) and
``/rerank_urls`` (image URLs; the documented route, also an MCP tool), which answer with
:meth:`lychee.report.Report.to_dict`, and ``/calibrate`` (labelled scores in, a threshold
out: :meth:`lychee.calibration.Calibration.to_dict`; also an MCP tool), and ``/explain`` (an uploaded
image) and ``/explain_url`` (an image URL; also an MCP tool), which answer with an occlusion map's
JSON and overlay. All refuse bad input with both languages' words."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from .. import calibration
from ..documents import text_label
from ..explain import Explanation
from ..images import ImageLoadError
from ..limits import Limits
from ..messages import UserError, printable
from ..ranking import ScoredImage
from ..settings import DEFAULT_MAX_SIDE, DEFAULT_TIE_EPSILON
from ..url_images import fetch_images_async, url_label
from .clients import client_key, in_worker
from .explaining import ExplainJob, accept_explain, explain
from .model_slot import ModelSlot
from .service import Form, Job, accept, rerank

log = logging.getLogger(__name__)

# /rerank's parameters in the order clients send them (it is undocumented, so gradio_client
# knows no names): each makes its hidden input component.
RERANK_PARAMETERS: dict[str, Callable[[], gr.components.Component]] = {
    "query": lambda: gr.Textbox(label="query"),
    "images": lambda: gr.File(file_count="multiple", label="images"),
    "preset": lambda: gr.Textbox("", label="preset"),
    "score_threshold": lambda: gr.Number(None, label="score_threshold"),
    "top_k": lambda: gr.Number(None, label="top_k"),
    "instruction": lambda: gr.Textbox("", label="instruction"),
    "normalize": lambda: gr.Checkbox(False, label="normalize"),
    "tie_epsilon": lambda: gr.Number(DEFAULT_TIE_EPSILON, label="tie_epsilon"),
    "max_side": lambda: gr.Number(DEFAULT_MAX_SIDE, label="max_side"),
    "query_image": lambda: gr.File(label="query_image"),
}


def refuse(exc: UserError) -> gr.Error:
    """An API refusal: both languages for the caller, one log line and no traceback here."""
    log.info("refused request: %s", printable(exc))
    return gr.Error(exc.bilingual(), print_exception=False)


async def with_documents(job: Job, urls: Sequence[str], limits: Limits, *, deadline: float,
                         client: str) -> Job:
    """``job`` with each document's image fetched from ``urls`` - the bytes, or the refusal - and its
    name (the URL's file name), by the request's ``deadline``. A document whose URL is "" has no
    image: a text alone, or, without a text, a document that fails as having neither."""
    texts = job.texts.texts if job.texts else ("",) * len(urls)
    wanted = [i for i, url in enumerate(urls) if url.strip()]
    images = await fetch_images_async([urls[i] for i in wanted], limits, deadline=deadline, client=client)
    fetched = dict(zip(wanted, images))
    labels = [url_label(url, i) if i in fetched else text_label(texts[i]) if texts[i] else f"document {i + 1}"
              for i, url in enumerate(urls)]
    return replace(job, images=tuple(fetched.get(i) for i in range(len(urls))), labels=tuple(labels))


async def fetch_one(url: str, limits: Limits, *, deadline: float, client: str) -> bytes | ImageLoadError:
    """The image at ``url``, or why it could not be had, by the request's ``deadline``."""
    (image,) = await fetch_images_async([url], limits, deadline=deadline, client=client)
    return image


def requester(request: gr.Request | None) -> str:
    """The client of a Gradio event (:func:`~lychee.web.clients.client_key`); "" when called without one."""
    if request is None:
        return ""
    return client_key(request.headers, request.client.host if request.client else None)


def uploaded_files(files: list[dict[str, Any]] | None) -> tuple[list[str], list[str]]:
    """Paths and original names of uploaded files of a raw API call (Gradio file records,
    already checked by Gradio)."""
    files = files or []
    return [f["path"] for f in files], [f.get("orig_name") or Path(f["path"]).name for f in files]


class RerankApi:
    """The two routes over one model slot; ``score`` is the (GPU-wrapped) scoring of a job."""

    def __init__(self, slot: ModelSlot, score: Callable[[Job], list[ScoredImage]]) -> None:
        self.slot = slot
        self.limits: Limits = slot.limits
        self.score = score

    def wire(self) -> None:
        """Hidden components and the three routes; call inside the page's ``gr.Blocks``."""
        with gr.Column(visible=False):
            inputs = [make() for make in RERANK_PARAMETERS.values()]
            output = gr.JSON(label="result")
        # Raw values reach the handler (preprocess=False): lychee's validator, not Gradio's coercion
        # (top_k 2.5 -> 2), judges them. Hidden from MCP and the API page, where list-of-file inputs
        # fail in Gradio 6.31; gradio_client still calls it. rerank_urls is the documented route.
        gr.on([], self.rerank, inputs=inputs, outputs=[output], api_name="rerank", concurrency_id="gpu",
              preprocess=False, api_visibility="undocumented")
        # Fetching URLs takes no scoring slot, no queue place and no thread: rerank_urls awaits the fetch
        # loop (its own bounds, lychee.fetch_loop), then a worker thread for the slot (ModelSlot.scoring).
        gr.api(self.rerank_urls, api_name="rerank_urls", concurrency_id="fetch", concurrency_limit=None)
        gr.api(self.calibrate, api_name="calibrate")  # no model call: it never waits behind scoring

    def rerank(self, *values: Any) -> dict[str, Any]:
        """Score uploaded candidate images against a query with lychee-rerank-mm and rank them.

        The file-upload twin of :meth:`rerank_urls`, with the same arguments (``images``:
        the uploaded files; ``query_image``: an uploaded reference image, or None) and the
        same JSON result.
        """
        given = dict(zip(RERANK_PARAMETERS, values))
        try:
            paths, names = uploaded_files(given.pop("images"))
            reference = given.pop("query_image")
            references, reference_names = uploaded_files([reference] if reference else None)
            form = Form(given.pop("query"), **given, query_image=next(iter(references), None),
                        query_image_label=next(iter(reference_names), None))
            return self._answer(accept(form, paths, self.limits, labels=names))
        except UserError as exc:
            raise refuse(exc) from None

    async def rerank_urls(self, query: str, image_urls: list[str], preset: str = "",
                          score_threshold: float | None = None, top_k: int | None = None, instruction: str = "",
                          normalize: bool = False, tie_epsilon: float = DEFAULT_TIE_EPSILON,
                          max_side: int = DEFAULT_MAX_SIDE, query_image_url: str = "", texts: list[str] | None = None,
                          request: gr.Request = None) -> dict[str, Any]:
        """Score candidate documents - images given as URLs, texts, or both - against a query (text, an image,
        or both) with lychee-rerank-mm.

        Returns JSON with schema_version 4: "query_kind" (text, image or image+text), "results"
        (best first; each has rank, index, source, score 0-10, raw_score, tied, raw_output,
        error), "filtered_out" (scored
        images below score_threshold or beyond top_k, each with a "reason"), "errors"
        (images that could not be fetched, read or scored), "warnings" (changes made to the
        input, e.g. a query cut to its length limit), "winner_strength", "counts", "model",
        "settings", "elapsed_s" and "images_per_s".

        Args:
            query: What the image should show, in Chinese, English or both (e.g. "一只black cat坐在red sofa上");
                may be "" when query_image_url is given.
            image_urls: The candidate images: data: URIs (data:image/png;base64,...) or public http(s) URLs;
                a URL that is refused or fails becomes an entry in "errors" and the rest are still ranked.
            preset: Optional scenario preset supplying defaults: screening, precise, mixed_language or
                pipeline; "" for none.
            score_threshold: Keep images scoring at least this (0-10); null = the preset's value, or keep all.
            top_k: Keep at most this many images after the threshold (a whole number); null = the preset's
                value; 0 = all.
            instruction: Optional task instruction for the model (at most 500 characters); "" = the model's default.
            normalize: true to min-max normalise the scores within this batch onto 0-10 before the threshold.
            tie_epsilon: Scores closer than this (0-10) to the best of their tie group are tied ("tied": true).
            max_side: Longest image side in pixels before scoring (a whole number, 64-4096); smaller is faster.
            query_image_url: Optional reference image, for "images like this one" (with query text: "like this
                one, but ..."): a data: URI or a public http(s) URL; "" for none. One that fails refuses the request.
            texts: Optional text of each document, one per entry of image_urls ("" for none), e.g. a product's
                title beside its photo; with image URL "" the document is the text alone. Cleaned like the query
                and cut at 4000 characters.
        """
        try:
            if not isinstance(image_urls, list) or not all(isinstance(u, str) for u in image_urls):
                raise UserError("bad_urls", value=repr(image_urls)[:80])
            if texts is not None and (not isinstance(texts, list) or not all(isinstance(t, str) for t in texts)):
                raise UserError("bad_texts", value=repr(texts)[:80])
            if not isinstance(query_image_url, str | None):
                raise UserError("not_text", field="query_image_url", value=repr(query_image_url)[:80])
            deadline, client = time.monotonic() + self.limits.url_timeout_s, requester(request)
            reference = None
            if query_image_url:
                reference = await fetch_one(query_image_url, self.limits, deadline=deadline, client=client)
            form = Form(query, preset=preset, score_threshold=score_threshold, top_k=top_k, instruction=instruction,
                        normalize=normalize, tie_epsilon=tie_epsilon, max_side=max_side, query_image=reference,
                        query_image_label=url_label(query_image_url, 0) if reference else None)
            # Refuse bad settings before fetching the candidates.
            job = await in_worker(accept, form, image_urls, self.limits, texts=texts)
            job = await with_documents(job, image_urls, self.limits, deadline=deadline, client=client)
            return await in_worker(self._answer, job)
        except UserError as exc:
            raise refuse(exc) from None

    def calibrate(self, scores: list[float] | None = None, labels: list[bool | None] | None = None,
                  report: dict[str, Any] | None = None,
                  target_precision: float = calibration.DEFAULT_TARGET_PRECISION,
                  queries: list[str] | None = None) -> dict[str, Any]:
        """Find the lowest score threshold that reaches a target precision on images labelled relevant or not.

        Give either scores and labels (several queries may be pooled), or a report and labels. Returns
        JSON with schema_version 1: "threshold" (the recommended score_threshold, or null when no
        threshold reaches target_precision), "recommended" (its precision, 95% Wilson
        "precision_interval", recall and f1), "separable" (false: no clean separation), "best_f1",
        "average_precision", "counts" (labels, relevant, irrelevant, queries), "warnings" (e.g. too few
        labels to trust) and "points" (precision, recall and F1 of score >= t for every distinct score t).

        Args:
            scores: The 0-10 score of each labelled image (e.g. from /rerank results), at most 10,000
                (LYCHEE_MAX_LABELS); null when a report is given.
            labels: With scores: true (relevant) or false per score. With a report: one entry per input image,
                in input order, true, false or null (not labelled).
            report: The JSON result of /rerank or /rerank_urls (schema_version 4); null when scores are given.
            target_precision: The precision the threshold must reach, above 0 and at most 1 (default 0.9).
            queries: Optional, with scores: the query of each label, to count how many queries are pooled.
        """
        try:
            if (scores is None) == (report is None):
                raise UserError("calibration_input")
            calibration.check_service_input(scores, labels, max_labels=self.limits.max_labels)
            if report is not None:
                scores, labels = calibration.report_scores(report, labels)
            return calibration.calibrate(scores, labels if labels is not None else [],
                                         target_precision=target_precision, queries=queries).to_dict()
        except UserError as exc:
            raise refuse(exc) from None

    def _answer(self, job: Job) -> dict[str, Any]:
        return rerank(job, self.slot, score=self.score).report.to_dict()


# /explain's parameters in the order clients send them (undocumented: gradio_client knows no names).
EXPLAIN_PARAMETERS: dict[str, Callable[[], gr.components.Component]] = {
    "query": lambda: gr.Textbox(label="query"),
    "image": lambda: gr.File(label="image"),
    "query_image": lambda: gr.File(label="query_image"),
    "instruction": lambda: gr.Textbox("", label="instruction"),
    "grid": lambda: gr.Textbox("", label="grid"),
    "max_side": lambda: gr.Number(DEFAULT_MAX_SIDE, label="max_side"),
}


class ExplainApi:
    """``/explain`` (an uploaded image, for ``gradio_client``) and ``/explain_url`` (a URL or ``data:``
    URI; documented, and the MCP tool): the occlusion map's JSON (``Explanation.to_dict``) and its
    overlay as a PNG. ``explain`` is the (GPU-wrapped) map of an accepted job."""

    def __init__(self, slot: ModelSlot, explain: Callable[[ExplainJob], Explanation]) -> None:
        self.slot = slot
        self.limits: Limits = slot.limits
        self.make_map = explain

    def wire(self) -> None:
        """Hidden components and the two routes; call inside the page's ``gr.Blocks``."""
        with gr.Column(visible=False):
            inputs = [make() for make in EXPLAIN_PARAMETERS.values()]
            url_inputs = [gr.Textbox(label="query"), gr.Textbox(label="image_url"),
                          gr.Textbox("", label="query_image_url"), gr.Textbox("", label="instruction"),
                          gr.Textbox("", label="grid"), gr.Number(DEFAULT_MAX_SIDE, label="max_side")]
            outputs = [gr.JSON(label="explanation"), gr.Image(type="pil", format="png", label="overlay")]
        # As /rerank: raw values, judged by lychee's validators; hidden from MCP and the API page.
        gr.on([], self.explain, inputs=inputs, outputs=outputs, api_name="explain", concurrency_id="gpu",
              preprocess=False, api_visibility="undocumented")
        gr.on([], self.explain_url, inputs=url_inputs, outputs=outputs, api_name="explain_url",
              concurrency_id="fetch", concurrency_limit=None)  # as rerank_urls

    def explain(self, *values: Any) -> tuple[dict[str, Any], Image.Image]:
        """Why does this uploaded image get its score? The file-upload twin of :meth:`explain_url`."""
        given = dict(zip(EXPLAIN_PARAMETERS, values))
        try:
            (path,), (name,) = uploaded_files([given["image"]]) if given["image"] else ((None,), (None,))
            references, reference_names = uploaded_files([given["query_image"]] if given["query_image"] else None)
            job = accept_explain(given["query"], path, self.limits, instruction=given["instruction"],
                                 query_image=next(iter(references), None),
                                 query_image_label=next(iter(reference_names), None), grid=given["grid"],
                                 max_side=given["max_side"], label=name)
            return self._answer(job)
        except UserError as exc:
            raise refuse(exc) from None

    async def explain_url(self, query: str, image_url: str, query_image_url: str = "", instruction: str = "",
                          grid: str = "", max_side: float = DEFAULT_MAX_SIDE,
                          request: gr.Request = None) -> tuple[dict[str, Any], Image.Image]:
        """Why does this image get its score? An occlusion map: each cell of a grid over the image is blurred
        over in turn and the copy scored again with lychee-rerank-mm.

        Returns JSON with schema_version 1 - "score" (0-10, the image's own score), "grid" [rows, cols],
        "cells" (each: row, col, box [left, top, right, bottom] in the scored image's pixels, masked_score,
        delta = score - masked_score: positive where the region carries the match, negative where it argues
        against it), "image_size", "method" ("occlusion"), "fill" ("blur"), "blur_radius", "forward_passes",
        "query_kind", "model" - and the overlay: the image under a red (supports) / blue (against) heat map.

        Args:
            query: What the image should show, in Chinese, English or both; may be "" when query_image_url is given.
            image_url: The image to explain: a data: URI (data:image/png;base64,...) or a public http(s) URL.
            query_image_url: Optional reference image for an image query: a data: URI or public URL; "" for none.
            instruction: Optional task instruction for the model (at most 500 characters); "" = the default.
            grid: "" for 16-36 cells as square as the image allows, "N" for N x N, "RxC" for R rows of C cells;
                each cell costs one forward pass, at most 100 cells.
            max_side: Longest image side in pixels before scoring (a whole number, 64-4096).
        """
        try:
            for field, value in (("image_url", image_url), ("query_image_url", query_image_url)):
                if not isinstance(value, str | None):
                    raise UserError("not_text", field=field, value=repr(value)[:80])
            if not image_url:
                raise UserError("no_image")
            deadline, client = time.monotonic() + self.limits.url_timeout_s, requester(request)
            urls = [image_url, query_image_url] if query_image_url else [image_url]
            image, *reference = await fetch_images_async(urls, self.limits, deadline=deadline, client=client)
            reference = reference[0] if reference else None
            job = await in_worker(accept_explain, query, image, self.limits, instruction=instruction,
                                  query_image=reference,
                                  query_image_label=url_label(query_image_url, 0) if reference else None, grid=grid,
                                  max_side=max_side, label=url_label(image_url, 0))
            return await in_worker(self._answer, job)
        except UserError as exc:
            raise refuse(exc) from None

    def _answer(self, job: ExplainJob) -> tuple[dict[str, Any], Image.Image]:
        explanation = explain(job, self.slot, make=self.make_map)
        return explanation.to_dict(), explanation.overlay()
