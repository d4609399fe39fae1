"""The GPU calls: scoring an accepted job, or making an occlusion map, under ``spaces.GPU``, the
duration each reserves on ZeroGPU, and refusals that survive the trip back from ZeroGPU's worker process.

Off Hugging Face Spaces ``spaces.GPU`` is a no-op and the same code runs in this process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr
import spaces

from ..messages import UserError, bilingual
from ..ranking import ScoredImage
from ..zero_gpu import on_zero_gpu
from .explaining import make_map, passes_reserved
from .i18n import Language, text
from .service import Job, ModelSlot

T = TypeVar("T")
Tell = Callable[[str | None, int, int], None]  # (stage or None, done, total)


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


class GpuCall:
    """``call(job, lang, session)``: ``work(job, tell, stopped)`` under ``spaces.GPU``, reserving the
    time of ``passes(job)`` forward passes; ``UserError`` for a refusal, wherever it was raised.

    ``tell(stage, done, total)`` shows progress (``stage`` None: ``progress_text``) in the page's
    language of the moment, ``language(session)`` (else ``lang``); ``stopped()`` is true once the
    session cancelled the run. Both are read live, in ZeroGPU's forked worker too when they read a
    :class:`~lychee.web.sessions.SessionBoard`. Create it before the app launches (ZeroGPU registers GPU
    functions then)."""

    def __init__(self, slot: ModelSlot, work: Callable[[Any, Tell, Callable[[], bool]], T],
                 passes: Callable[[Any], int], *, progress_text: str = "progress_scoring",
                 progress_unit: str = "progress_unit", language: Callable[[str], Language | None] = lambda _: None,
                 stopped: Callable[[str], bool] = lambda _: False) -> None:
        self.slot, self.work, self.passes = slot, work, passes
        self.progress_text, self.progress_unit = progress_text, progress_unit
        self.language, self.stopped = language, stopped
        self._on_gpu = spaces.GPU(duration=self._duration)(self.run_in_worker)

    def _duration(self, job: Any, lang: Language = "en", session: str = "") -> int:
        return self.slot.gpu_seconds(self.passes(job))

    def run_in_worker(self, job: Any, lang: Language = "en", session: str = "") -> T:
        """The function ``spaces.GPU`` runs: on ZeroGPU in a worker process forked for the GPU."""
        progress = gr.Progress()

        def tell(stage: str | None, done: int, total: int) -> None:
            now = self.language(session) or lang
            progress((done, total), desc=text(f"progress_{stage}" if stage else self.progress_text, now),
                     unit=text(self.progress_unit, now))

        try:
            return self.work(job, tell, lambda: self.stopped(session))
        except UserError as exc:
            raise GpuUserError(exc.key, exc.params) from None

    def __call__(self, job: Any, lang: Language = "en", session: str = "") -> T:
        if on_zero_gpu():  # refused before it is scheduled, not by Hugging Face after it waited in the queue
            self.slot.gpu_seconds(self.passes(job))
        try:
            return self._on_gpu(job, lang, session)
        except GpuUserError as exc:
            raise exc.user_error() from None


class GpuScoring(GpuCall):
    """Scoring an accepted :class:`~lychee.web.service.Job`: its records, in input order, with
    progress through decoding and scoring."""

    def __init__(self, slot: ModelSlot, *, language: Callable[[str], Language | None] = lambda _: None,
                 stopped: Callable[[str], bool] = lambda _: False) -> None:
        super().__init__(slot, lambda job, tell, stop: slot.score(job, progress=tell, stop=stop),
                         lambda job: len(job.images), language=language, stopped=stopped)

    def score_in_worker(self, job: Job, lang: Language = "en") -> list[ScoredImage]:
        return self.run_in_worker(job, lang)


class GpuExplaining(GpuCall):
    """An accepted :class:`~lychee.web.explaining.ExplainJob`'s occlusion map: the image and its
    covered copies, with the time of the largest grid it may have reserved."""

    def __init__(self, slot: ModelSlot) -> None:
        super().__init__(slot, lambda job, tell, _: make_map(job, slot, progress=lambda done, total: tell(
            None, done, total)), passes_reserved, progress_text="progress_explaining", progress_unit="progress_copies")
