"""Gradio inputs that hand what they receive to lychee's own checks instead of acting on it.

Each is a template of the Gradio component it extends (``is_template``: the page draws it
as that component), changed in one way:

- :class:`ReferenceImage` passes the uploaded file's path on undecoded, so lychee's loader
  judges it (its limits, its bilingual messages) instead of Gradio's Pillow call;
- :class:`Blocks` refuses a call with too few values in both languages, without Gradio's
  list of component objects (memory addresses), and a call of any event whose file records are
  not uploads of this server (:func:`lychee.web.file_records.foreign_file`), before Gradio would
  download or read them; and what an unexpected error says to the caller names no server path.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from ..messages import bilingual
from .file_records import foreign_file
from .model_slot import hide_paths


class ReferenceImage(gr.Image):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        path = getattr(payload, "path", None)
        return path if path is not None and self.type == "filepath" else super().preprocess(payload)


class Blocks(gr.Blocks):
    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        if len(inputs) < len(block_fn.inputs):
            raise gr.Error(bilingual("too_few_values", needed=len(block_fn.inputs), got=len(inputs)),
                           print_exception=False)

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False
                              ) -> Any:
        # explicit_call: the app calling its own function (cached examples), not a request.
        key = None if explicit_call else foreign_file(inputs, get_upload_folder())
        if key is not None:
            raise gr.Error(bilingual(key), print_exception=False)
        return await super().preprocess_data(block_fn, inputs, state, explicit_call)

    async def process_api(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return await super().process_api(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            # show_error sends an unexpected error's text to the caller: without the server's paths
            # (the log keeps the whole traceback).
            raise gr.Error(hide_paths(str(exc)[:500])) from exc
