"""A byte-bounded LRU cache of the vision tower's output, one entry per image.

Re-ranking the same gallery with a new query repeats the image half of every pair: the
processor's resize/normalise on the CPU and the vision tower on the accelerator. Both
depend only on the image's pixels and the pixel settings, so their output - a few MB
per image - is kept here, keyed by a hash of the decoded pixels, and a second query
runs only the language model. Entries live in CPU memory (they never compete with the
model for GPU memory) and the least recently used ones are dropped first.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import torch


ENV_VAR = "LYCHEE_VISION_CACHE_MB"
DEFAULT_MB = 1024  # the 7B's features of 100 images at 1280 visual tokens (~9.2 MB each) fit


@dataclass(frozen=True)
class VisionFeatures:
    """One image as the language model sees it: its patch grid and its embeddings."""

    grid_thw: tuple[int, int, int]  # (t, h, w) patches before the 2x2 merge
    embeds: torch.Tensor            # [visual tokens = t*h*w/4, hidden]

    @property
    def nbytes(self) -> int:
        return self.embeds.nbytes


def image_digest(image: Image.Image) -> str:
    """SHA-256 of the decoded pixels, mode and size: equal only for identical images."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def cache_bytes(requested: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The cache bound: ``requested`` if given, else ``$LYCHEE_VISION_CACHE_MB`` MiB, else
    1024 MiB. 0 turns the cache off."""
    if requested is None:
        environ = os.environ if environ is None else environ
        text = environ.get(ENV_VAR, str(DEFAULT_MB))
        mib = int(text) if text.strip().isdecimal() else -1
        if mib < 0:
            raise ValueError(f"{ENV_VAR} must be a whole number of MiB >= 0 (0 turns the cache off), got {text!r}")
        return mib * 2**20
    if requested < 0:
        raise ValueError(f"vision_cache_bytes must be >= 0 (0 turns the cache off), got {requested}")
    return requested


class VisionCache:
    """Least-recently-used :class:`VisionFeatures`, at most ``max_bytes`` in total.

    Not thread-safe on its own: the reranker scores one request at a time.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, VisionFeatures] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> VisionFeatures | None:
        """The entry for ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, entry: VisionFeatures) -> None:
        """Store ``entry``, dropping the least recently used entries until it fits.

        An entry larger than the whole cache is not stored.
        """
        if entry.nbytes > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        while self.bytes + entry.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes
        self._entries[key] = entry
        self.bytes += entry.nbytes

    def clear(self) -> None:
        """Drop every entry (the hit and miss counters stay)."""
        self._entries.clear()
        self.bytes = 0

    def __repr__(self) -> str:
        return (f"VisionCache({len(self)} images, {self.bytes / 2**20:.1f} of {self.max_bytes / 2**20:.0f} MiB, "
                f"{self.hits} hits, {self.misses} misses)")
