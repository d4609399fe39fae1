"""Hugging Face ZeroGPU: whether this process runs there, and how long one GPU call may reserve.

On a ZeroGPU Space the process owns no GPU. The ``spaces`` package (0.51.3) emulates CUDA in
the main process: a tensor moved to ``cuda`` there becomes a placeholder whose data is packed
to disk when the app launches (``spaces/zero/torch/patching.py``). Each ``@spaces.GPU`` call
is scheduled against the device API with the duration it asks for and runs in a worker forked
from the main process (``spaces/zero/wrappers.py``). A fresh worker first initialises CUDA and
reads the packed weights back onto the GPU with ``O_DIRECT`` (``torch/packing.py``), so the
first call after a cold start also pays for moving every weight byte; a worker is reused only
while the device API reports the same GPU still idle-assigned to this Space.

Pure: no torch, no gradio.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

ENV_VAR = "SPACES_ZERO_GPU"  # set by Hugging Face on ZeroGPU Spaces ("true")

# What one call asks for. BASE: CUDA initialisation, the first kernels' start-up and the
# worker's own hand-offs. WEIGHT_BYTES_PER_S: a cautious disk-to-GPU rate for the packed
# weights (the 16.6 GB of lychee-rerank-mm then take ~17 s); charged on every call, because
# a call cannot know before it is scheduled whether it gets a warm worker. PER_IMAGE: a
# cautious per-pair cost at the model card's 1,280 visual tokens.
BASE_S = 20.0
WEIGHT_BYTES_PER_S = 1e9
PER_IMAGE_S = 0.5
# Of BASE_S, what the work itself may use before its own deadline fires: the rest is left for CUDA's
# start-up and the hand-offs before and after the call, so the platform's abort never comes first.
WORK_SHARE_OF_BASE = 0.5


def on_zero_gpu(environ: Mapping[str, str] | None = None) -> bool:
    """True on a Hugging Face ZeroGPU Space (``SPACES_ZERO_GPU`` set to a true value)."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return value.strip().lower() in ("1", "t", "true")  # what ``spaces`` itself accepts


def gpu_seconds(images: int, weight_bytes: int) -> int:
    """The duration one ``@spaces.GPU`` call scoring ``images`` pairs should reserve, in whole seconds,
    including the move of ``weight_bytes`` of packed weights onto a fresh worker's GPU."""
    return math.ceil(BASE_S + weight_bytes / WEIGHT_BYTES_PER_S + PER_IMAGE_S * images)


def images_within(seconds: int, weight_bytes: int) -> int:
    """How many images one call of at most ``seconds`` can score (0 when not even one fits)."""
    return max(0, math.floor((seconds - BASE_S - weight_bytes / WEIGHT_BYTES_PER_S) / PER_IMAGE_S))


def work_seconds(reserved: int, weight_bytes: int) -> int:
    """How long the work inside a call that reserved ``reserved`` seconds may run before it stops
    itself: the reservation less a fresh worker's move of ``weight_bytes`` and part of the base
    allowance (at least 1 s)."""
    spare = BASE_S * (1 - WORK_SHARE_OF_BASE) + weight_bytes / WEIGHT_BYTES_PER_S
    return max(1, math.floor(reserved - spare))
