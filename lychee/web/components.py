"""Gradio inputs that hand what they receive to lychee's own checks instead of acting on it.

Each is a template of the Gradio component it extends (``is_template``: the page draws it
as that component), changed in one way:

- :class:`UploadedFile` takes files uploaded to this server only: a file record whose
  ``path`` is a URL is refused before Gradio would download it (with its own, looser rules);
- :class:`ReferenceImage` passes the uploaded file's path on undecoded, so lychee's loader
  judges it (its limits, its bilingual messages) instead of Gradio's Pillow call;
- :class:`Blocks` refuses a call with too few values in both languages, without Gradio's
  list of component objects (memory addresses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from gradio_client.utils import is_http_url_like

from ..messages import bilingual


class UploadedFile(gr.File):
    is_template = True

    async def async_move_resource_to_block_cache(self, url_or_file_path: str | Path | None) -> str | None:
        if url_or_file_path is not None and is_http_url_like(str(url_or_file_path)):
            raise gr.Error(bilingual("file_path_is_url"), print_exception=False)
        return await super().async_move_resource_to_block_cache(url_or_file_path)


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
