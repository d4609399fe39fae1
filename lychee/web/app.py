"""The page: :func:`build_demo` lays out the Gradio 6 page and wires each event beside its components.

What a request means lives in :mod:`lychee.web.service`, what a result looks like in :mod:`lychee.web.view`,
the explanation and Calibrate panels in :mod:`lychee.web.explain_panel` and :mod:`lychee.web.calibrate_panel`,
the API routes in :mod:`lychee.web.api`, the server around it in :mod:`lychee.web.server`.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr

from ..limits import Limits
from ..messages import UserError
from ..presets import PRESETS
from ..settings import BY_NAME
from .api import ExplainApi, RerankApi
from .calibrate_panel import CalibratePanel
from .components import Blocks, ReferenceImage
from .explain_panel import ExplainPanel
from .gpu import GpuJobs
from .i18n import Language, text
from .model_slot import ModelSlot
from .rest_routes import RestApi
from .service import (
    Form,
    RerankOutcome,
    Shown,
    accept,
    caption_lines,
    captions_from_names,
    form_settings,
    remove_older_than,
    rerank,
    scored_with,
)
from .sessions import SessionBoard
from .view import (
    Alert,
    alerts_html,
    download_stem,
    filtered_gallery,
    hints_markdown,
    preset_description,
    ranked_gallery,
    raw_output_headers,
    raw_output_rows,
    status_html,
    status_line,
    table_datatypes,
    table_headers,
    table_note,
    table_rows,
    table_widths,
    winner_card,
    winner_level,
)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent.parent / "examples"
DEFAULT_LANGUAGE: Language = "en"
DOWNLOADS_KEPT_S = 3600  # the page's JSON/CSV downloads, like Gradio's own cache (delete_cache below)
DEFAULT_PRESET = "screening"
# Chinese browsers get the Chinese UI on first load; the radio switches at any time.
PICK_LANGUAGE_JS = "() => (navigator.language || '').toLowerCase().startsWith('zh') ? 'zh' : 'en'"
# UI-only events: no API, no queue, and quick, so no progress animation either.
PRIVATE: dict[str, Any] = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}
# A run brings the results' top edge into view when it starts and when it ends (on a phone they sit
# below the controls), unless the query is empty: then the alert under the query box is all there is to see.
SHOW_RESULTS_JS = """(query, reference) => {
  const results = document.getElementById('lychee-results');
  const top = results.getBoundingClientRect().top;
  const asked = query.trim() || reference;  // no query at all: stay at the box to fill in
  if (asked && (top < 0 || top > window.innerHeight / 3)) results.scrollIntoView({behavior: 'smooth'});
}"""
# Gradio's own words (footer, upload prompts, toast buttons) follow its locale, which lives in its core
# module; the language switch sets it too. Nothing happens if a Gradio release renames that module.
GRADIO_LOCALE_JS = """async (lang) => {
  const core = performance.getEntriesByType('resource').map((e) => e.name)
    .find((name) => /\\/assets\\/core-[\\w-]+\\.js$/.test(name));
  if (core) (await import(core)).changeLocale(lang === 'zh' ? 'zh-CN' : 'en');
}"""

def sample_images() -> list[str]:
    """The bundled sample photographs (``examples/images``), if this checkout has them."""
    folder = EXAMPLES_DIR / "images"
    return sorted(str(p) for p in folder.glob("*.jpg")) if folder.is_dir() else []


def example_queries() -> list[str]:
    """Chinese, English and mixed example queries from ``examples/queries.json``."""
    path = EXAMPLES_DIR / "queries.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [query for group in ("zh", "en", "mixed") for query in data.get(group, [])]


def preset_choices(lang: Language) -> list[tuple[str, str]]:
    return [(preset.label[lang], name) for name, preset in PRESETS.items()]


def header_markdown(lang: Language) -> str:
    return f"# {text('title', lang)}\n{text('subtitle', lang)}"


def write_downloads(outcome: RerankOutcome, folder: Path) -> tuple[str, str]:
    """The outcome as JSON and CSV, named after the query and the time, in a fresh folder under
    ``folder``; earlier downloads older than an hour are removed first, as Gradio prunes its cache."""
    remove_older_than(folder, DOWNLOADS_KEPT_S)
    target = folder / uuid.uuid4().hex
    target.mkdir(parents=True)
    report = outcome.report
    stem = download_stem(report.query, datetime.now())
    json_path, csv_path = target / f"{stem}.json", target / f"{stem}.csv"
    json_path.write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8")
    csv_path.write_text(report.to_csv(), encoding="utf-8-sig")  # BOM: Excel then reads Chinese names right
    return str(json_path), str(csv_path)


class RerankDemo:
    """The page's components and the handlers wired to them (one instance per app)."""

    def __init__(self, slot: ModelSlot) -> None:
        self.slot = slot
        self.limits = slot.limits
        self.downloads = tempfile.TemporaryDirectory(prefix="lychee-downloads-")  # removed at exit
        self.localized: list[tuple[Any, dict[str, str]]] = []  # (component, argument -> UI text key)
        # Per browser session (Gradio's session hash): the language it shows now, read while a run is
        # under way so its progress and results come in the language of the moment; and runs cancelled.
        self.sessions = SessionBoard()
        self.on_gpu = GpuJobs(slot, language=self.sessions.language, stopped=self.sessions.cancelled)
        self.calibrate = CalibratePanel(self.tr, DEFAULT_LANGUAGE)
        self.explainer = ExplainPanel(self.tr, DEFAULT_LANGUAGE, slot, self.on_gpu.explain)

    def language(self, session: str, fallback: Language = DEFAULT_LANGUAGE) -> Language:
        return self.sessions.language(session) or fallback

    # -- layout -----------------------------------------------------------------------------
    def tr(self, factory: Callable[..., Any], keys: dict[str, str], **kwargs: Any) -> Any:
        """A component whose ``keys`` (argument -> UI text key) follow the language switch."""
        component = factory(**{arg: text(key, DEFAULT_LANGUAGE) for arg, key in keys.items()}, **kwargs)
        self.localized.append((component, keys))
        return component

    def setting_control(self, name: str, factory: Callable[..., Any], **kwargs: Any) -> Any:
        """The page control of setting ``name``: its registry entry's text keys and options, and ``kwargs``."""
        control = BY_NAME[name].control
        keys = {"label": f"{control.key}_label"} | ({"info": f"{control.key}_info"} if control.info else {})
        return self.tr(factory, keys, **control.options, **kwargs)

    def build(self) -> gr.Blocks:
        with Blocks(title="Lychee Rerank MM", delete_cache=(DOWNLOADS_KEPT_S, DOWNLOADS_KEPT_S)) as demo:
            self.shown = gr.State(None)   # the Shown result, once a run has succeeded
            self.outcome = gr.State(None)  # its outcome alone, for the Calibrate and explanation panels
            self.alerted = gr.State(())   # the last run's alerts, re-rendered when the language changes
            with gr.Row(elem_id="lychee-top"):
                self.header = gr.Markdown(header_markdown(DEFAULT_LANGUAGE), elem_classes="lychee-header")
                self.lang = gr.Radio([("中文", "zh"), ("English", "en")], value=DEFAULT_LANGUAGE,
                                     label=f"{text('language', 'zh')} / {text('language', 'en')}", show_label=False,
                                     container=False, scale=0, min_width=200, elem_id="lychee-language")
            self.model_status = gr.Markdown(self.slot.status_line(DEFAULT_LANGUAGE),
                                            elem_classes="lychee-model-status")
            self.model_timer = gr.Timer(1.0)
            # Side by side on a laptop (query, Run and results on the first screen); stacked on a phone.
            with gr.Row(elem_id="lychee-main"):
                with gr.Column(scale=5, min_width=340, elem_id="lychee-controls"):
                    self._build_inputs()
                with gr.Column(scale=7, min_width=340, elem_id="lychee-results"):
                    self._build_results()
            RerankApi(self.slot, self.on_gpu.score).wire()
            RestApi(self.slot, self.on_gpu.score).wire(demo)
            ExplainApi(self.slot, self.on_gpu.explain).wire()
            self._wire(demo)
        # api_open=False: every queued event goes through the queue (and its door checks), none by /run/.
        demo.queue(max_size=self.limits.queue_size, default_concurrency_limit=self.limits.concurrency,
                   api_open=False)
        return demo

    def _build_inputs(self) -> None:
        tr = self.tr
        with gr.Row(equal_height=True, elem_id="lychee-query-row"):
            self.query_keys = {"label": "query_label", "placeholder": "query_placeholder"}
            self.query = tr(gr.Textbox, self.query_keys, lines=1, max_lines=4, scale=1, min_width=180,
                            elem_id="lychee-query")
            self.run_button = tr(gr.Button, {"value": "run_button"}, variant="primary", scale=0, min_width=110,
                                 elem_id="lychee-run")
            # Takes the Rerank button's place while a run is under way.
            self.cancel_button = tr(gr.Button, {"value": "cancel_button"}, variant="stop", scale=0, min_width=110,
                                    visible=False, elem_id="lychee-cancel")
        # Under the query, always there (so nothing moves when advice comes): what works in a query, or
        # advice on its vague words.
        hints = show_hints("", DEFAULT_LANGUAGE, self.limits)
        self.hints = gr.Markdown(hints["value"], elem_classes=hints["elem_classes"], elem_id="lychee-hints")
        # A refused run or what cleaning changed: beside the box it is about, replaced by the next run.
        self.alerts = gr.HTML(elem_id="lychee-alerts")
        # Optional, right under the query: "images like this one"; the image's own toolbar clears it.
        self.reference = tr(ReferenceImage, {"label": "reference_label"}, type="filepath",
                            sources=["upload", "clipboard"], height=150, elem_id="lychee-reference")
        self.images = tr(gr.Gallery, {"label": "images_label"}, type="filepath", file_types=["image"],
                         interactive=True, columns=4, height=260, object_fit="cover", elem_id="lychee-images")
        self.samples = sample_images()
        self.sample_button = tr(gr.Button, {"value": "sample_button"}, size="sm", visible=bool(self.samples))
        # Optional: a text per image (a product title...), typed or taken from the file names.
        with tr(gr.Accordion, {"label": "captions_label"}, open=False):
            self.captions = tr(gr.Textbox, {"placeholder": "captions_placeholder", "info": "captions_info"},
                               lines=3, max_lines=12, show_label=False, elem_id="lychee-captions")
            self.captions_button = tr(gr.Button, {"value": "captions_button"}, size="sm")
        queries = example_queries()
        self.examples = gr.Examples([[q] for q in queries], inputs=[self.query], examples_per_page=9,
                                    label=text("examples_label", DEFAULT_LANGUAGE)) if queries else None
        preset = PRESETS[DEFAULT_PRESET]
        self.preset = gr.Dropdown(preset_choices(DEFAULT_LANGUAGE), value=DEFAULT_PRESET,
                                  label=text("preset_label", DEFAULT_LANGUAGE))
        self.preset_info = gr.Markdown(preset_description(DEFAULT_PRESET, preset.score_threshold, preset.top_k,
                                                          DEFAULT_LANGUAGE))
        self.calibrate.build_my_threshold()
        control = self.setting_control
        self.threshold = control("score_threshold", gr.Slider, value=preset.score_threshold, elem_id="lychee-threshold")
        top_k_max = max(self.limits.max_images, *(p.top_k for p in PRESETS.values()))
        self.top_k = control("top_k", gr.Slider, maximum=top_k_max, value=preset.top_k)
        with tr(gr.Accordion, {"label": "advanced_label"}, open=False):
            self.instruction = control("instruction", gr.Textbox)
            self.normalize = control("normalize", gr.Checkbox, value=BY_NAME["normalize"].default)
            with gr.Row():
                self.tie_epsilon = control("tie_epsilon", gr.Slider, value=BY_NAME["tie_epsilon"].default,
                                           elem_id="lychee-tie-epsilon")
                self.max_side = control("max_side", gr.Slider, value=BY_NAME["max_side"].default)
        # The page's side of a Form: one component per field.
        self.form_fields = {"query": self.query, "preset": self.preset, "score_threshold": self.threshold,
                            "top_k": self.top_k, "instruction": self.instruction, "normalize": self.normalize,
                            "tie_epsilon": self.tie_epsilon, "max_side": self.max_side,
                            "query_image": self.reference}

    def _build_results(self) -> None:
        # At the results' top edge: the status line, and under it the one progress indicator of a run.
        self.status = gr.HTML(status_html(text("status_idle", DEFAULT_LANGUAGE)), elem_id="lychee-status")
        self.progress = gr.HTML(elem_id="lychee-progress")
        self.winner = gr.HTML(elem_id="lychee-winner")
        self.explainer.build()
        self.ranked = self.tr(gr.Gallery, {"label": "ranked_label"}, columns=4, height="auto", fit_columns=False,
                              object_fit="cover", interactive=False, elem_id="lychee-ranked",
                              elem_classes="lychee-ranked")
        self.table = self.tr(gr.Dataframe, {"label": "table_label"}, headers=table_headers(DEFAULT_LANGUAGE),
                             interactive=False, wrap=True, column_widths=table_widths(), datatype=table_datatypes(),
                             # No copy button: it would copy the thumbnails' HTML; the CSV download has the data.
                             buttons=["fullscreen"], elem_id="lychee-table")
        self.table_note = gr.Markdown(elem_classes="lychee-table-note")
        with gr.Accordion(text("filtered_label", DEFAULT_LANGUAGE, count=0), open=False) as self.filtered_box:
            self.filtered = gr.Gallery(columns=5, height="auto", fit_columns=False, object_fit="cover",
                                       interactive=False, show_label=False, elem_id="lychee-filtered")
        with gr.Accordion(text("raw_label", DEFAULT_LANGUAGE), open=False) as self.raw_box:
            self.raw_table = gr.Dataframe(headers=raw_output_headers(DEFAULT_LANGUAGE), interactive=False,
                                          wrap=True, show_label=False)
        with gr.Row():
            self.json_file = self.tr(gr.DownloadButton, {"label": "json_button"}, visible=False, size="sm")
            self.csv_file = self.tr(gr.DownloadButton, {"label": "csv_button"}, visible=False, size="sm")
        self.calibrate.build()
        self.results = [self.status, self.winner, self.ranked, self.table, self.table_note, self.filtered_box,
                        self.filtered, self.raw_box, self.raw_table, self.json_file, self.csv_file]

    def _wire(self, demo: gr.Blocks) -> None:
        form = {self.lang, self.images, self.captions, *self.form_fields.values()}
        run_triggers = [self.run_button.click, self.query.submit]
        gr.on(run_triggers, None, inputs=[self.query, self.reference], js=SHOW_RESULTS_JS, **PRIVATE)
        buttons = [self.run_button, self.cancel_button]
        # One scoring job at a time across the page and the API (LYCHEE_CONCURRENCY).
        running = gr.on(run_triggers, self.run, inputs=form,
                        outputs=[*buttons, self.shown, self.outcome, self.alerts, self.alerted, *self.results,
                                 *self.explainer.parts],
                        show_progress_on=[self.progress], api_visibility="private", concurrency_id="gpu")
        running.then(self.end, outputs=buttons, **PRIVATE)
        ranked = running.success(None, inputs=[self.query, self.reference], js=SHOW_RESULTS_JS, **PRIVATE)
        self.cancel_button.click(self.cancel, inputs=[self.lang], outputs=[*buttons, self.alerts, self.alerted],
                                 cancels=[running], **PRIVATE)
        # The ranking rules over the stored scores: no model call. What the scores depend on marks them stale.
        ranking_inputs = [self.preset, self.threshold, self.top_k, self.tie_epsilon, self.normalize]
        restyle = {"fn": self.restyle, "inputs": {self.shown, *form},
                   "outputs": [self.shown, self.outcome, self.preset_info, self.explainer.choice, self.explainer.button,
                               *self.results], **PRIVATE}
        gr.on([c.change for c in ranking_inputs], **restyle)
        ranked.then(**restyle)  # a slider moved while the run was under way applies to its results
        scoring_inputs = [self.query, self.instruction, self.max_side, self.reference, self.images,
                          self.captions]
        gr.on([c.change for c in scoring_inputs], self.mark_stale, inputs={self.shown, *form}, outputs=[self.status],
              **PRIVATE)
        self.explainer.wire(self.ranked, self.lang, self.outcome)
        relabelled = [c for c, _ in self.localized] + [self.header, self.model_status, self.hints, self.preset,
                                                        self.preset_info, self.alerts]
        if self.examples is not None:
            relabelled.append(self.examples.dataset)
            # gr.Examples restores the query box's build-time label; put the current language back.
            self.examples.load_input_event.then(lambda lang: {self.query: localize(self.query_keys, lang)},
                                                inputs=[self.lang], outputs=[self.query], **PRIVATE)
        self.lang.change(self.relabel, inputs={self.shown, self.alerted, *form},
                         outputs=list(dict.fromkeys(relabelled + self.results)), **PRIVATE)
        # Gradio's upload prompts take their words when drawn: drawn again, they follow the new locale.
        uploads = [self.reference, self.images]
        (self.lang.change(None, inputs=[self.lang], js=GRADIO_LOCALE_JS, **PRIVATE)
         .then(lambda: dict.fromkeys(uploads, gr.update(visible=False)), outputs=uploads, **PRIVATE)
         .then(lambda: dict.fromkeys(uploads, gr.update(visible=True)), outputs=uploads, **PRIVATE))
        self.query.change(lambda query, lang: {self.hints: show_hints(query, lang, self.limits)},
                          inputs=[self.query, self.lang], outputs=[self.hints], **PRIVATE)
        self.preset.input(self.apply_preset, inputs=[self.preset], outputs=[self.threshold, self.top_k, self.raw_box],
                          **PRIVATE)
        self.sample_button.click(self.add_samples, inputs=[self.images], outputs=[self.images], **PRIVATE)
        self.captions_button.click(lambda gallery: {self.captions: captions_from_names(
            [Path(path).name for path, _ in gallery or []])}, inputs=[self.images], outputs=[self.captions], **PRIVATE)
        gr.on([demo.load, self.model_timer.tick], self.poll_model, inputs=[self.lang],
              outputs=[self.model_status, self.model_timer], **PRIVATE)
        demo.load(None, js=PICK_LANGUAGE_JS, outputs=[self.lang], **PRIVATE)
        demo.unload(self.forget)
        self.calibrate.wire(demo, running, self.outcome, self.threshold, self.lang)

    # -- handlers ---------------------------------------------------------------------------
    def render(self, outcome: RerankOutcome | None, lang: Language, *, raw_open: bool | None = None,
               note: str = "") -> dict[Any, Any]:
        """Updates for ``self.results`` in ``lang``: an outcome, or the idle page without one."""
        raw_box = {"label": text("raw_label", lang)} | ({} if raw_open is None else {"open": raw_open})
        updates = {self.raw_box: gr.update(**raw_box)}
        if outcome is None:
            return updates | {self.status: gr.update(value=status_html(text("status_idle", lang))),
                              self.filtered_box: gr.update(label=text("filtered_label", lang, count=0)),
                              self.table: gr.update(value={"headers": table_headers(lang), "data": []}),
                              self.table_note: gr.update(value=""),
                              self.raw_table: gr.update(value={"headers": raw_output_headers(lang), "data": []})}
        report = outcome.report
        level = ["lychee-ranked", f"lychee-ranked--{winner_level(outcome)}"] if report.results else ["lychee-ranked"]
        return updates | {
            self.status: gr.update(value=status_html(status_line(outcome, lang), note=note)),
            self.winner: gr.update(value=winner_card(outcome, lang)),
            self.ranked: gr.update(value=ranked_gallery(outcome), elem_classes=level),
            self.table: gr.update(value={"headers": table_headers(lang), "data": table_rows(outcome, lang)}),
            self.table_note: gr.update(value=table_note(outcome, lang)),
            self.filtered_box: gr.update(label=text("filtered_label", lang, count=len(report.filtered_out))),
            self.filtered: gr.update(value=filtered_gallery(outcome, lang)),
            self.raw_table: gr.update(value={"headers": raw_output_headers(lang),
                                             "data": raw_output_rows(outcome, lang)}),
        }

    def render_downloads(self, outcome: RerankOutcome) -> dict[Any, Any]:
        json_path, csv_path = write_downloads(outcome, Path(self.downloads.name))
        return {self.json_file: gr.update(value=json_path, visible=True),
                self.csv_file: gr.update(value=csv_path, visible=True)}

    def form(self, values: dict[Any, Any]) -> Form:
        """The page's form from the values of its components."""
        given = {name: values[component] for name, component in self.form_fields.items()}
        return Form(given.pop("query"), query_image=given.pop("query_image"), **given)

    def candidates(self, values: dict[Any, Any]) -> list[str]:
        return [path for path, _ in values[self.images] or []]

    def begin(self) -> dict[Any, Any]:
        """A run starts: Cancel takes Rerank's place and the last run's alerts go."""
        return {self.run_button: gr.update(visible=False), self.cancel_button: gr.update(visible=True),
                self.alerts: "", self.alerted: ()}

    def end(self) -> dict[Any, Any]:
        return {self.run_button: gr.update(visible=True), self.cancel_button: gr.update(visible=False)}

    def run(self, values: dict[Any, Any], request: gr.Request,
            progress: gr.Progress = gr.Progress()  # noqa: B008 - how gradio asks for a progress bar
            ) -> Iterator[dict[Any, Any]]:
        """The Run button and Enter: Cancel takes Rerank's place, the last run's alerts go; then the
        gallery's images are reranked and everything is rendered.

        A request the user must fix gets an alert and no other updates: the last good results stay.
        Everything is rendered in the language the page shows when the run ends."""
        yield self.begin()
        session = request.session_hash or ""
        if self.sessions.language(session) is None:
            self.sessions.set_language(session, values[self.lang])
        self.sessions.start_run(session)
        form, images = self.form(values), self.candidates(values)
        texts = caption_lines(values[self.captions], len(images))
        # "0 / N images" from the first moment, not Gradio's bare timer.
        waiting = "progress_decoding" if self.slot.settled else "progress_loading"
        lang = self.language(session)
        progress((0, len(images)), desc=text(waiting, lang), unit=text("progress_unit", lang))
        alerts: tuple[Alert, ...]
        try:
            job = accept(form, images, self.limits, texts=texts)
            outcome = rerank(job, self.slot, score=lambda accepted: self.on_gpu.score(accepted, lang, session))
        except UserError as exc:
            alerts = (("cancelled" if exc.key == "cancelled" else "error", exc),)
            yield {self.alerts: alerts_html(alerts, self.language(session)), self.alerted: alerts}
            return
        lang = self.language(session)
        alerts = tuple(("notice", notice) for notice in outcome.job.notices)
        chosen = outcome.request.settings.preset
        yield (self.render(outcome, lang, raw_open=bool(chosen and chosen.raw_output_expanded))
               | self.render_downloads(outcome)
               | {self.shown: Shown(outcome, scored_with(form, images, texts)), self.outcome: outcome,
                  self.alerts: alerts_html(alerts, lang), self.alerted: alerts}
               | self.explainer.after_run(outcome, lang, progress))

    def cancel(self, lang: Language, request: gr.Request) -> dict[Any, Any]:
        """Cancel: the job stops at its next progress report; the last good results stay."""
        self.sessions.cancel(request.session_hash or "")
        alerts: tuple[Alert, ...] = (("cancelled", UserError("cancelled")),)
        return self.end() | {self.alerts: alerts_html(alerts, lang), self.alerted: alerts}

    def restyle(self, values: dict[Any, Any]) -> dict[Any, Any]:
        """A new threshold, top_k, tie epsilon, normalisation or preset: the stored scores ranked again."""
        lang, form, shown = values[self.lang], self.form(values), values[self.shown]
        info = {self.preset_info: preset_description(form.get("preset"), form.get("score_threshold"),
                                                     form.get("top_k"), lang)}
        if shown is None:
            return info
        try:
            settings = form_settings(form)
        except UserError:  # a half-typed number: the page keeps what it shows
            return info
        if replace(settings, max_side=shown.outcome.request.settings.max_side) == shown.outcome.request.settings:
            return info  # e.g. a preset that sets the values already in force
        outcome = shown.outcome.reranked(settings)
        return (info | self.render(outcome, lang, note=self.note(shown, values, text("reranked_note", lang)))
                | self.render_downloads(outcome) | {self.shown: Shown(outcome, shown.inputs), self.outcome: outcome}
                | self.explainer.reranked(outcome, lang))

    def note(self, shown: Shown, values: dict[Any, Any], otherwise: str = "") -> str:
        """The stale-results warning when the scores no longer match the inputs, else ``otherwise``."""
        images = self.candidates(values)
        texts = caption_lines(values[self.captions], len(images))
        fresh = scored_with(self.form(values), images, texts) == shown.inputs
        return otherwise if fresh else text("stale_note", values[self.lang])

    def mark_stale(self, values: dict[Any, Any]) -> dict[Any, Any]:
        shown = values[self.shown]
        if shown is None:
            return {self.status: gr.skip()}
        note = self.note(shown, values)
        return {self.status: status_html(status_line(shown.outcome, values[self.lang]), note=note)}

    def relabel(self, values: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        """The language switch: every label, hint and message, and the last result, in the new language."""
        lang, shown, form = values[self.lang], values[self.shown], self.form(values)
        self.sessions.set_language(request.session_hash or "", lang)
        updates = {component: localize(keys, lang) for component, keys in self.localized}
        updates |= {self.header: header_markdown(lang), self.model_status: self.slot.status_line(lang),
                    self.hints: show_hints(form.query or "", lang, self.limits),
                    self.alerts: alerts_html(values[self.alerted], lang),
                    self.preset_info: preset_description(form.get("preset"), form.get("score_threshold"),
                                                         form.get("top_k"), lang),
                    self.preset: gr.update(label=text("preset_label", lang), choices=preset_choices(lang),
                                           value=form.get("preset"))}
        if self.examples is not None:
            updates[self.examples.dataset] = gr.update(label=text("examples_label", lang))
        outcome = shown.outcome if shown else None
        rendered = self.render(outcome, lang, note=self.note(shown, values) if shown else "")
        for component, change in rendered.items():  # e.g. the table: new label and new rows
            updates[component] = updates.get(component, {}) | change
        return updates

    def apply_preset(self, name: str | None) -> dict[Any, Any]:
        """Choosing a preset fills the threshold and top_k and opens or closes the raw output."""
        chosen = PRESETS.get(name or "")
        if chosen is None:
            return {}
        return {self.threshold: chosen.score_threshold, self.top_k: chosen.top_k,
                self.raw_box: gr.update(open=chosen.raw_output_expanded)}

    def add_samples(self, gallery: list[tuple[str, str | None]] | None) -> dict[Any, Any]:
        """The sample photos join the images already there (none twice)."""
        have = [path for path, _ in gallery or []]
        names = {Path(path).name for path in have}
        return {self.images: have + [p for p in self.samples if Path(p).name not in names]}

    def poll_model(self, lang: Language) -> dict[Any, Any]:
        """The model line, refreshed until loading has finished."""
        self.slot.start_loading()
        return {self.model_status: self.slot.status_line(lang),
                self.model_timer: gr.Timer(active=not self.slot.settled)}

    def forget(self, request: gr.Request) -> None:
        """A closed page: its session's language and cancel flag go."""
        self.sessions.forget(request.session_hash or "")


def localize(keys: dict[str, str], lang: Language) -> dict[str, Any]:
    return gr.update(**{arg: text(key, lang) for arg, key in keys.items()})


def show_hints(query: str, lang: Language, limits: Limits) -> dict[str, Any]:
    """The hint panel: advice on the query's vague words, else the visual cues that work."""
    advice = hints_markdown(query, lang, limits.max_query_chars)
    return gr.update(value=advice or text("hints_cues", lang),
                     elem_classes=["lychee-hints", "lychee-hints--advice" if advice else "lychee-hints--cues"])


def build_demo(slot: ModelSlot | None = None) -> gr.Blocks:
    """The Blocks app, its queue bounded by ``slot.limits``; serve it with
    ``demo.launch(**lychee.web.server.launch_options(slot.limits))``."""
    return RerankDemo(slot or ModelSlot()).build()
