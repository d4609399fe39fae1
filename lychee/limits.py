"""Input limits, with safe defaults, each overridable by an environment variable.

Per-image limits (file size, pixels) fail only that image, with an
:class:`~lychee.images.ImageLoadError`; per-request limits (image count) refuse the
request with :class:`LimitExceeded`. Every message names the limit, its value and the
variable that changes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from .messages import UserError


class LimitExceeded(UserError):
    """A request asked for more than a limit allows; the message says which limit."""


def env_name(field_name: str) -> str:
    """The environment variable that sets a :class:`Limits` field: ``LYCHEE_<FIELD>``."""
    return f"LYCHEE_{field_name.upper()}"


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask of the engine."""

    max_images: int = 200             # LYCHEE_MAX_IMAGES: images per request
    max_file_bytes: int = 25_000_000  # LYCHEE_MAX_FILE_BYTES: size of one image file
    max_image_pixels: int = 100_000_000  # LYCHEE_MAX_IMAGE_PIXELS: width x height (decompression bombs)
    max_query_chars: int = 1000       # LYCHEE_MAX_QUERY_CHARS: longer queries are truncated, with a warning
    max_instruction_chars: int = 500  # LYCHEE_MAX_INSTRUCTION_CHARS: longer instructions are truncated, with a warning
    max_document_chars: int = 4000   # LYCHEE_MAX_DOCUMENT_CHARS: longer document texts are truncated, with a warning
    queue_size: int = 16              # LYCHEE_QUEUE_SIZE: requests waiting in the web app's queue
    concurrency: int = 1              # LYCHEE_CONCURRENCY: requests scored at once by the web app
    request_timeout_s: int = 600      # LYCHEE_REQUEST_TIMEOUT_S: seconds one web request may run
    max_visual_tokens: int = 1280     # LYCHEE_MAX_VISUAL_TOKENS: per image in the web app (max_pixels = N x 28 x 28)
    url_timeout_s: int = 20           # LYCHEE_URL_TIMEOUT_S: seconds to fetch one image URL (rerank_urls)
    # LYCHEE_GPU_MAX_SECONDS: the longest GPU reservation one request may ask of ZeroGPU. Hugging Face refuses
    # longer ones ("ZeroGPU illegal duration"); its maximum is undocumented, 300 s as its staff state it.
    gpu_max_seconds: int = 300

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """Defaults overridden by ``LYCHEE_<FIELD>`` variables (positive integers)."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            name = env_name(field.name)
            if name in environ:
                try:
                    value = int(environ[name])
                except ValueError:
                    value = 0
                if value < 1:
                    raise ValueError(f"{name} must be a whole number >= 1, got {environ[name]!r}")
                values[field.name] = value
        return cls(**values)

    def check_image_count(self, count: int) -> None:
        """Raise :class:`LimitExceeded` when ``count`` images are more than one request may hold."""
        if count > self.max_images:
            raise LimitExceeded("too_many_images", max_images=self.max_images, count=count)
