"""Input limits, with safe defaults, each overridable by an environment variable."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask of the engine."""

    max_images: int = 200             # LYCHEE_MAX_IMAGES: images per request
    max_file_bytes: int = 25_000_000  # LYCHEE_MAX_FILE_BYTES: size of one image file
    max_image_pixels: int = 100_000_000  # LYCHEE_MAX_IMAGE_PIXELS: width x height (decompression bombs)
    max_query_chars: int = 1000       # LYCHEE_MAX_QUERY_CHARS: longer queries are truncated, with a warning
    queue_size: int = 16              # LYCHEE_QUEUE_SIZE: requests waiting in the web app's queue
    concurrency: int = 1              # LYCHEE_CONCURRENCY: requests scored at once by the web app
    request_timeout_s: int = 600      # LYCHEE_REQUEST_TIMEOUT_S: seconds one web request may run

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Limits:
        """Defaults overridden by ``LYCHEE_<FIELD>`` variables (positive integers)."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            name = f"LYCHEE_{field.name.upper()}"
            if name in environ:
                try:
                    value = int(environ[name])
                except ValueError:
                    value = 0
                if value < 1:
                    raise ValueError(f"{name} must be a whole number >= 1, got {environ[name]!r}")
                values[field.name] = value
        return cls(**values)
