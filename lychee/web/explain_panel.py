""""Why this score?" under the #1 card: for #1, or the image chosen in the ranked gallery, the image as
scored beside its occlusion map (a slider), and one line per strongest region. The logic lives in
:mod:`lychee.web.explaining`; the map is made in the scoring queue, by the page's GPU worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from ..explain import Explanation
from ..messages import UserError
from .explaining import ExplainJob, button_label, chosen_result, explain, page_job, slider_images, summary_markdown
from .i18n import Language, text
from .model_slot import ModelSlot
from .service import RerankOutcome
from .view import Alert, alerts_html

PRIVATE: dict[str, Any] = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}


class ExplainPanel:
    """The panel's components (built by the page, which passes its ``tr`` for translated labels) and
    the handlers wired to them; ``make`` turns an accepted job and a language into a map."""

    def __init__(self, tr: Callable[..., Any], lang: Language, slot: ModelSlot,
                 make: Callable[[ExplainJob, Language], Explanation]) -> None:
        self.tr = tr
        self.default_lang = lang
        self.slot = slot
        self.make = make

    def build(self) -> None:
        """The hidden box, shown once a run has a #1."""
        tr = self.tr
        self.choice = gr.State(None)  # position in the ranked gallery of the chosen image; None: #1
        self.explanation = gr.State(None)
        with gr.Column(visible=False, elem_id="lychee-explain") as self.box:
            self.button = gr.Button(button_label(None, self.default_lang), size="sm", elem_id="lychee-explain-button")
            self.hint = tr(gr.Markdown, {"value": "explain_hint"}, elem_classes="lychee-explain-hint")
            self.slider = tr(gr.ImageSlider, {"label": "explain_slider_label"}, type="pil", interactive=False,
                             visible=False, buttons=["fullscreen"], max_height=380, elem_id="lychee-explain-slider")
            self.text = gr.Markdown(elem_id="lychee-explain-text")
            # Why no map came (e.g. a request over the GPU limit), in the page's language, beside the button.
            self.alerted = gr.State(())
            self.alert = gr.HTML(elem_id="lychee-explain-alert")
        self.parts = [self.choice, self.explanation, self.box, self.button, self.slider, self.text, self.alerted,
                      self.alert]

    def wire(self, ranked: gr.Gallery, lang: gr.Radio, outcome: gr.State) -> None:
        """Choosing an image in the ranked gallery retargets the button; the button makes the map in
        the scoring queue. (A run resets the map, or makes #1's itself under a preset that asks.)"""
        made = [self.explanation, self.slider, self.text, self.alerted, self.alert]
        ranked.select(self.choose, inputs=[lang, outcome], outputs=[self.choice, self.button], **PRIVATE)
        self.button.click(self.explain, inputs=[lang, outcome, self.choice], outputs=made,
                          show_progress_on=[self.text], api_visibility="private", concurrency_id="gpu")
        lang.change(self.relabel, inputs=[lang, outcome, self.choice, self.explanation, self.alerted],
                    outputs=[self.button, self.text, self.alert], **PRIVATE)

    def after_run(self, outcome: RerankOutcome, lang: Language, progress: Any) -> dict[Any, Any]:
        """A new run: the button on #1 (the box shown when there is one) and no map yet - or, under a
        preset that asks for it (``precise``), #1's map at once, in the same job."""
        top = chosen_result(outcome, None)
        updates = {self.choice: None, self.explanation: None, self.box: gr.update(visible=top is not None),
                   self.button: button_label(top, lang), self.slider: gr.update(value=None, visible=False),
                   self.text: "", self.alerted: (), self.alert: ""}
        preset = outcome.request.settings.preset
        if top is not None and preset is not None and preset.explain_top:
            updates |= self.explain(lang, outcome, None, progress)
        return updates

    def reranked(self, outcome: RerankOutcome, lang: Language) -> dict[Any, Any]:
        """The ranked gallery's order changed: the button explains the new #1 until another is chosen."""
        return {self.choice: None, self.button: button_label(chosen_result(outcome, None), lang)}

    def choose(self, lang: Language, outcome: RerankOutcome | None, selected: gr.SelectData) -> dict[Any, Any]:
        """An image chosen in the ranked gallery becomes the one the button explains."""
        return {self.choice: selected.index, self.button: button_label(chosen_result(outcome, selected.index), lang)}

    def explain(self, lang: Language, outcome: RerankOutcome | None, choice: int | None,
                progress: gr.Progress = gr.Progress()  # noqa: B008 - how gradio asks for a progress bar
                ) -> dict[Any, Any]:
        """The button: the chosen ranked image's (else #1's) occlusion map beside the image, and its lines."""
        result = chosen_result(outcome, choice)
        if result is None:
            return {self.explanation: gr.skip()}
        job = page_job(outcome, result)
        progress(0.0, desc=text("progress_explaining", lang))  # the copies are counted once the grid is known
        try:
            explanation = explain(job, self.slot, make=lambda accepted: self.make(accepted, lang))
        except UserError as exc:
            alerts: tuple[Alert, ...] = (("error", exc),)
            return {self.explanation: gr.skip(), self.alerted: alerts, self.alert: alerts_html(alerts, lang)}
        return {self.explanation: explanation, self.slider: gr.update(value=slider_images(explanation), visible=True),
                self.text: summary_markdown(explanation, lang), self.alerted: (), self.alert: ""}

    def relabel(self, lang: Language, outcome: RerankOutcome | None, choice: int | None, explanation: Any,
                alerts: tuple[Alert, ...]) -> dict[Any, Any]:
        """The language switch: the button, the map's lines and why no map came, in ``lang``."""
        return {self.button: button_label(chosen_result(outcome, choice), lang),
                self.text: summary_markdown(explanation, lang) if explanation is not None else "",
                self.alert: alerts_html(alerts, lang)}
