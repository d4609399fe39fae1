"""The page's Calibrate panel: label the images of a run by clicking them, see the precision-recall
curve and each label's scores, and apply the lowest threshold that reaches a target precision,
kept in the browser as "my threshold". The logic lives in :mod:`lychee.web.labelling`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
import pandas as pd

from ..calibration import DEFAULT_TARGET_PRECISION
from .i18n import Language, text
from .labelling import (
    Labels,
    applied_threshold,
    calibration_of,
    curve_points,
    cycle_label,
    distribution_bins,
    distribution_rows,
    label_gallery,
    my_threshold_label,
    rescored,
    saved_threshold,
    summary_markdown,
    to_save,
)
from .service import RerankOutcome

PRIVATE: dict[str, Any] = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}
SAVED_KEY = "lychee-my-threshold"  # the browser's localStorage key of "my threshold"
CLASS_COLOURS = ("#16a34a", "#9ca3af")  # relevant, not relevant
CURVE_TYPES = {"recall": float, "precision": float, "threshold": float}
SCORE_TYPES = {"score": str, "label": str, "images": int}


class CalibratePanel:
    """The panel's components (built by the page, which passes its ``tr`` for translated labels)
    and the handlers wired to them."""

    def __init__(self, tr: Callable[..., Any], lang: Language) -> None:
        self.tr = tr
        self.default_lang = lang

    def build_my_threshold(self) -> None:
        """"My threshold", beside the presets: shown once one is kept in this browser."""
        self.saved = gr.BrowserState(None, storage_key=SAVED_KEY)
        self.my_button = gr.Button(visible=False, size="sm", elem_id="lychee-my-threshold")

    def build(self) -> None:
        """The panel itself, collapsed under the results."""
        tr, lang = self.tr, self.default_lang
        self.labels = gr.State(())
        with tr(gr.Accordion, {"label": "calibrate_label"}, open=False, elem_id="lychee-calibrate"):
            tr(gr.Markdown, {"value": "calibrate_intro"})
            self.gallery = gr.Gallery(columns=4, height="auto", allow_preview=False, interactive=False,
                                      object_fit="cover", show_label=False, elem_id="lychee-label-gallery")
            self.target = tr(gr.Slider, {"label": "target_precision_label", "info": "target_precision_info"},
                             minimum=0.5, maximum=1.0, step=0.01, value=DEFAULT_TARGET_PRECISION,
                             elem_id="lychee-target-precision")
            self.summary = gr.Markdown(summary_markdown(None, lang), elem_id="lychee-calibration")
            with gr.Row(equal_height=True):
                self.curve = gr.LinePlot(x="recall", y="precision", x_lim=[0, 1], y_lim=[0, 1.05],
                                         tooltip=["threshold", "precision", "recall"], height=320,
                                         label=text("curve_label", lang), min_width=260, elem_id="lychee-pr-curve")
                self.distribution = gr.BarPlot(x="score", y="images", color="label", y_aggregate="sum",
                                               height=320, min_width=260,
                                               label=text("distribution_label", lang), elem_id="lychee-distribution")
            with gr.Row():
                self.use_button = tr(gr.Button, {"value": "use_threshold_button"}, variant="primary",
                                     interactive=False, elem_id="lychee-use-threshold")
                self.clear_button = tr(gr.Button, {"value": "clear_labels_button"}, size="sm",
                                       elem_id="lychee-clear-labels")

    def wire(self, demo: gr.Blocks, ran: Any, outcome: gr.State, threshold: gr.Slider, lang: gr.Radio) -> None:
        """Labels follow clicks and runs (``ran``: the run event, whose result is in ``outcome``); the
        figures follow labels, target and language. "Use this threshold" and "my threshold" set
        ``threshold``."""
        self.threshold = threshold
        shown = [self.labels, self.gallery, self.summary, self.curve, self.distribution, self.use_button]
        inputs = [self.labels, outcome, self.target, lang]
        # Not outcome.change: Gradio would hash the outcome to see whether it changed.
        ran.success(self.refresh, inputs=inputs, outputs=shown, **PRIVATE)
        gr.on([self.target.change, lang.change], self.refresh, inputs=inputs, outputs=shown, **PRIVATE)
        self.gallery.select(self.click, inputs=inputs, outputs=shown, **PRIVATE)
        self.clear_button.click(lambda out, target, language: self.show((), out, target, language),
                                inputs=inputs[1:], outputs=shown, **PRIVATE)
        self.use_button.click(self.use, inputs=[self.labels, self.target, lang],
                              outputs=[threshold, self.saved, self.my_button], **PRIVATE)
        self.my_button.click(self.recall_saved, inputs=[self.saved], outputs=[threshold], **PRIVATE)
        gr.on([demo.load, lang.change], self.show_saved, inputs=[self.saved, lang], outputs=[self.my_button],
              **PRIVATE)

    # -- handlers ---------------------------------------------------------------------------
    def show(self, labels: Labels, outcome: RerankOutcome | None, target: float, lang: Language) -> dict[Any, Any]:
        result = calibration_of(labels, target)
        names = {"recall": text("axis_recall", lang), "precision": text("axis_precision", lang),
                 "score": text("axis_score", lang), "images": text("axis_images", lang)}
        # Typed even when empty: the page draws a plot's axes from the types of its first data.
        curve = pd.DataFrame(curve_points(result), columns=list(CURVE_TYPES)).astype(CURVE_TYPES)
        scores = pd.DataFrame(distribution_rows(labels, lang), columns=list(SCORE_TYPES)).astype(SCORE_TYPES)
        classes = [text("class_relevant", lang), text("class_irrelevant", lang)]
        return {
            self.labels: labels,
            self.gallery: label_gallery(labels, outcome, lang),
            self.summary: summary_markdown(result, lang),
            self.curve: gr.update(value=curve, label=text("curve_label", lang), x_title=names["recall"],
                                  y_title=names["precision"]),
            self.distribution: gr.update(value=scores, label=text("distribution_label", lang),
                                         x_title=names["score"], y_title=names["images"],
                                         color_title=text("axis_label", lang),
                                         color_map=dict(zip(classes, CLASS_COLOURS)),
                                         sort=distribution_bins(labels) or None),
            self.use_button: gr.update(interactive=applied_threshold(result) is not None),
        }

    def refresh(self, labels: Labels, outcome: RerankOutcome | None, target: float, lang: Language
                ) -> dict[Any, Any]:
        """A new run (its scores replace the old ones of what it labelled), target or language."""
        return self.show(rescored(labels, outcome) if outcome is not None else labels, outcome, target, lang)

    def click(self, labels: Labels, outcome: RerankOutcome | None, target: float, lang: Language,
              selected: gr.SelectData) -> dict[Any, Any]:
        """A click on an image of the label gallery cycles its label."""
        if outcome is None:
            return {}
        return self.show(cycle_label(labels, outcome, selected.index), outcome, target, lang)

    def use(self, labels: Labels, target: float, lang: Language) -> dict[Any, Any]:
        """"Use this threshold": set the threshold slider and keep it as my threshold."""
        record = to_save(calibration_of(labels, target))
        if record is None:
            return {}
        return {self.threshold: record["threshold"], self.saved: record,
                self.my_button: gr.update(value=my_threshold_label(record, lang), visible=True)}

    def recall_saved(self, saved: Any) -> dict[Any, Any]:
        record = saved_threshold(saved)
        return {} if record is None else {self.threshold: record["threshold"]}

    def show_saved(self, saved: Any, lang: Language) -> dict[Any, Any]:
        label = my_threshold_label(saved, lang)
        return {self.my_button: gr.update(value=label, visible=bool(label))}
