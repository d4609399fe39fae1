"""Input limits, with safe defaults, each overridable by an environment variable.

Per-image limits (file size, pixels, decoded bytes) fail only that image, with an
:class:`~lychee.images.ImageLoadError`; per-request limits (image count) refuse the
request with :class:`LimitExceeded`; a request body over ``max_request_bytes`` is refused
by the web app with HTTP 413 before it is read. Every message names the limit, its value
and the variable that changes it.

Four limits default to values derived from the others (``None`` here means "derived"):
``max_request_image_bytes`` = 4 files at ``max_file_bytes``; ``max_request_bytes`` = those
bytes as base64 (data: URIs) plus 1 MiB for the other fields; ``max_decoded_bytes`` =
``max_image_pixels`` at 4 bytes a pixel (RGB, RGBA, 32-bit and float as Pillow holds them);
``max_decoding_bytes`` = 2 images at ``max_decoded_bytes``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .messages import UserError

UPLOAD_LIMIT_VARIABLES = "LYCHEE_MAX_IMAGES x LYCHEE_MAX_FILE_BYTES"  # what sets Limits.max_upload_bytes


def base64_size(size: int) -> int:
    """Characters of ``size`` bytes in base64."""
    return 4 * -(-size // 3)


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
    url_timeout_s: int = 20           # LYCHEE_URL_TIMEOUT_S: seconds to fetch all image URLs of one request
    # LYCHEE_GPU_MAX_SECONDS: the longest GPU reservation one request may ask of ZeroGPU. Hugging Face refuses
    # longer ones ("ZeroGPU illegal duration"); its maximum is undocumented, 300 s as its staff state it.
    gpu_max_seconds: int = 300
    fetch_concurrency: int = 4        # LYCHEE_FETCH_CONCURRENCY: requests fetching image URLs at once (rerank_urls)
    max_labels: int = 10_000          # LYCHEE_MAX_LABELS: labelled scores one /calibrate call takes
    upload_client_bytes: int = 2_000_000_000  # LYCHEE_UPLOAD_CLIENT_BYTES: one client's uploads kept (an hour)
    upload_total_bytes: int = 10_000_000_000  # LYCHEE_UPLOAD_TOTAL_BYTES: all uploads and Gradio's cache on disk
    max_request_image_bytes: int | None = None  # LYCHEE_MAX_REQUEST_IMAGE_BYTES: image bytes one request holds
    max_request_bytes: int | None = None  # LYCHEE_MAX_REQUEST_BYTES: body of one web request (HTTP 413 beyond)
    max_decoded_bytes: int | None = None  # LYCHEE_MAX_DECODED_BYTES: one image in memory, decoded
    max_decoding_bytes: int | None = None  # LYCHEE_MAX_DECODING_BYTES: images being decoded at once, together

    def __post_init__(self) -> None:
        derived = {"max_request_image_bytes": lambda: 4 * self.max_file_bytes,
                   "max_request_bytes": lambda: base64_size(self.max_request_image_bytes) + 2 ** 20,
                   "max_decoded_bytes": lambda: 4 * self.max_image_pixels,
                   "max_decoding_bytes": lambda: 2 * self.max_decoded_bytes}
        for name, value in derived.items():  # in this order: later ones build on earlier ones
            if getattr(self, name) is None:
                object.__setattr__(self, name, value())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """Defaults overridden by ``LYCHEE_<FIELD>`` variables (positive integers)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
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

    @property
    def max_upload_bytes(self) -> int:
        """The largest upload request (multipart, to disk): ``max_images`` files at ``max_file_bytes``,
        plus room for each part's headers."""
        return self.max_images * (self.max_file_bytes + 2 ** 16)

    @property
    def max_json_values(self) -> int:
        """The most JSON values (array items, object members) one API call may send: room for the
        largest legal call (a gallery of ``max_images`` records, or ``max_labels`` labelled scores
        with their queries). Parsed JSON takes ~100 bytes a value (three copies while a call waits),
        far more than its text: this bounds what a body within the byte cap may cost."""
        return 64 * self.max_images + 4 * self.max_labels + 4096

    def check_image_count(self, count: int) -> None:
        """Raise :class:`LimitExceeded` when ``count`` images are more than one request may hold."""
        if count > self.max_images:
            raise LimitExceeded("too_many_images", max_images=self.max_images, count=count)
