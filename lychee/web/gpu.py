"""The GPU call: scoring an accepted job under ``spaces.GPU``, the duration it reserves on ZeroGPU,
and refusals that survive the trip back from ZeroGPU's worker process.

Off Hugging Face Spaces ``spaces.GPU`` is a no-op and the same code runs in this process.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import spaces

from ..messages import UserError, bilingual
from ..ranking import ScoredImage
from ..zero_gpu import on_zero_gpu
from .i18n import Language, text
from .service import Job, ModelSlot


class GpuUserError(gr.Error):
    """A :class:`UserError` on its way out of the GPU call. ``spaces`` hands only a ``gr.Error`` back
    from its ZeroGPU worker (any other exception arrives as "ZeroGPU worker error" with its class
    name), so the error crosses as one, both languages as its message, and :class:`GpuScoring`
    raises the ``UserError`` it carries again on this side."""

    def __init__(self, key: str, params: dict[str, Any]) -> None:
        super().__init__(bilingual(key, **params), print_exception=False)
        self.key, self.params = key, params

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across the worker's queue
        return type(self), (self.key, self.params)

    def user_error(self) -> UserError:
        return UserError(self.key, **self.params)


class GpuScoring:
    """``scoring(job, lang)``: the job's records, scored under ``spaces.GPU``; ``UserError`` for a refusal,
    wherever it was raised. Create it before the app launches (ZeroGPU registers GPU functions then)."""

    def __init__(self, slot: ModelSlot) -> None:
        self.slot = slot
        self._on_gpu = spaces.GPU(duration=self._duration)(self.score_in_worker)

    def _duration(self, job: Job, lang: Language = "en") -> int:
        return self.slot.gpu_seconds(len(job.images))

    def score_in_worker(self, job: Job, lang: Language = "en") -> list[ScoredImage]:
        """The function ``spaces.GPU`` runs: on ZeroGPU in a worker process forked for the GPU."""
        progress = gr.Progress()
        try:
            return self.slot.score(job, progress=lambda done, total: progress(
                (done, total), desc=text("progress_scoring", lang), unit=text("progress_unit", lang)))
        except UserError as exc:
            raise GpuUserError(exc.key, exc.params) from None

    def __call__(self, job: Job, lang: Language = "en") -> list[ScoredImage]:
        if on_zero_gpu():  # refused before it is scheduled, not by Hugging Face after it waited in the queue
            self.slot.gpu_seconds(len(job.images))
        try:
            return self._on_gpu(job, lang)
        except GpuUserError as exc:
            raise exc.user_error() from None
