"""The app's one GPU function: scoring an accepted job or making an occlusion map, dispatched on the
job, under one ``spaces.GPU``; the duration each job reserves on ZeroGPU, the deadline that fires
inside it, and refusals that survive the trip back from ZeroGPU's worker process.

One function, not one per kind of job: ZeroGPU forks a worker per GPU function and moves every weight
byte onto its GPU, so a map asked for after a run reuses the run's warm worker, its weights and its
vision cache instead of forking a second worker and moving the weights again.

Off Hugging Face Spaces ``spaces.GPU`` is a no-op and the same code runs in this process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
import spaces

from ..explain import Explanation
from ..messages import UserError, bilingual
from ..ranking import ScoredImage
from ..zero_gpu import on_zero_gpu, work_seconds
from .explaining import ExplainJob, make_map, passes_reserved
from .i18n import Language, text
from .model_slot import ModelSlot
from .service import Job

Tell = Callable[[str | None, int, int], None]  # (stage or None, done, total)


class GpuUserError(gr.Error):
    """A :class:`UserError` on its way out of the GPU call. ``spaces`` hands only a ``gr.Error`` back
    from its ZeroGPU worker (any other exception arrives as "ZeroGPU worker error" with its class
    name), so the error crosses as one, both languages as its message, and :class:`GpuJobs`
    raises the ``UserError`` it carries again on this side."""

    def __init__(self, key: str, params: dict[str, Any]) -> None:
        super().__init__(bilingual(key, **params), print_exception=False)
        self.key, self.params = key, params

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across the worker's queue
        return type(self), (self.key, self.params)

    def user_error(self) -> UserError:
        return UserError(self.key, **self.params)


def forward_passes(job: Job | ExplainJob) -> int:
    """The forward passes ``job`` reserves GPU time for: one per document, or an explanation's
    cells and its image."""
    return passes_reserved(job) if isinstance(job, ExplainJob) else len(job.images)


class GpuJobs:
    """``score(job, lang, session)`` and ``explain(job, lang, session)``: the job's work under the app's
    one ``spaces.GPU`` function, reserving the time of its forward passes; ``UserError`` for a
    refusal, wherever it was raised.

    Progress is told in the page's language of the moment, ``language(session)`` (else ``lang``);
    ``stopped(session)`` is true once the session cancelled the run. Both are read live, in ZeroGPU's
    forked worker too when they read a :class:`~lychee.web.sessions.SessionBoard`. Create it before the
    app launches (ZeroGPU registers GPU functions then)."""

    def __init__(self, slot: ModelSlot, *, language: Callable[[str], Language | None] = lambda _: None,
                 stopped: Callable[[str], bool] = lambda _: False) -> None:
        self.slot, self.language, self.stopped = slot, language, stopped
        self._on_gpu = spaces.GPU(duration=self._duration)(self.run_in_worker)

    def _duration(self, job: Job | ExplainJob, lang: Language = "en", session: str = "") -> int:
        return self.slot.gpu_seconds(forward_passes(job), explaining=isinstance(job, ExplainJob))

    def run_in_worker(self, job: Job | ExplainJob, lang: Language = "en",
                      session: str = "") -> list[ScoredImage] | Explanation:
        """The function ``spaces.GPU`` runs: on ZeroGPU in a worker process forked for the GPU. There the
        job's deadline is the time reserved for it, less what a fresh worker spends moving the weights
        and a margin, so the project's timeout reaches the user before the platform aborts the call."""
        progress = gr.Progress()
        explaining = isinstance(job, ExplainJob)

        def tell(stage: str | None, done: int, total: int) -> None:
            now = self.language(session) or lang
            if stage is None:
                stage = "explaining" if explaining else "scoring"
            progress((done, total), desc=text(f"progress_{stage}", now),
                     unit=text("progress_copies" if explaining else "progress_unit", now))

        stop = lambda: self.stopped(session)  # noqa: E731
        try:
            seconds = work_seconds(self._duration(job), self.slot.weight_bytes) if on_zero_gpu() else None
            if explaining:
                return make_map(job, self.slot, progress=lambda done, total: tell(None, done, total),
                                stop=stop, seconds=seconds)
            return self.slot.score(job, progress=tell, stop=stop, seconds=seconds)
        except UserError as exc:
            raise GpuUserError(exc.key, exc.params) from None

    def _call(self, job: Job | ExplainJob, lang: Language, session: str) -> Any:
        if on_zero_gpu():  # refused before it is scheduled, not by Hugging Face after it waited in the queue
            self._duration(job)
        try:
            return self._on_gpu(job, lang, session)
        except GpuUserError as exc:
            raise exc.user_error() from None

    def score(self, job: Job, lang: Language = "en", session: str = "") -> list[ScoredImage]:
        """Every document's record of an accepted job, in input order, with progress through decoding and scoring."""
        return self._call(job, lang, session)

    def explain(self, job: ExplainJob, lang: Language = "en", session: str = "") -> Explanation:
        """An accepted explain job's occlusion map: the image and its covered copies."""
        return self._call(job, lang, session)
