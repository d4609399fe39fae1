"""Run by ``tests/test_zero_gpu.py`` in a process of its own, under ``spaces``' ZeroGPU emulation.

The Space's start-up calls (``lychee.web.server.main`` up to the launch), then the function that
``spaces.GPU`` runs in its worker, called here in the main thread: ``spaces`` emulates CUDA
there, and its worker itself cannot run on a machine without a GPU (it initialises real CUDA
before it calls the function). The scoring happens before a launch would pack the weights to
disk. Prints one JSON object for the test to judge.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import spaces  # noqa: F401 - first, as on a Space: it must patch torch before torch is imported
from spaces.zero import decorator  # its cache holds each function registered with spaces.GPU
from spaces.zero.wrappers import exception_result  # what the worker sends back on failure

from lychee.web.app import build_demo
from lychee.web.explaining import accept_explain
from lychee.web.gpu import GpuJobs, GpuUserError
from lychee.web.model_slot import ModelSlot
from lychee.web.service import Form, accept


def scores(scoring: GpuJobs, form: Form, images: list[str]) -> list[float | None]:
    """Each image's raw score from the GPU function (None for an image that failed)."""
    records = scoring.run_in_worker(accept(form, images, scoring.slot.limits))
    return [None if r.error else r.raw_score for r in records]


def main(images: list[str]) -> None:
    slot = ModelSlot.for_space()
    slot.load_now()  # ZeroGPU wants the model on cuda before the app serves
    build_demo(slot)
    # The app's own wrapped functions (the cache maps both the function and its wrapper to the wrapper).
    gpu_functions = len({id(wrapper) for wrapper in decorator.decorated_cache.values()})
    scoring = GpuJobs(slot)
    engine = slot.get().backend.engine
    tower_calls = []  # images through the vision tower, per call
    get_image_features = engine.model.get_image_features
    engine.model.get_image_features = lambda pixels, grids: (
        tower_calls.append(len(grids)) or get_image_features(pixels, grids))
    text_query = Form(query="a red square on a white background")
    first = scores(scoring, text_query, images)
    second = scores(scoring, Form(query="一只黑猫 on a sofa"), images)
    image_query = scores(scoring, Form(query="", query_image=images[0]), images[1:])
    explanation = scoring.run_in_worker(accept_explain("a red square", images[1], slot.limits))

    broken = GpuJobs(ModelSlot(str(Path(images[0]).parent / "no-such-checkpoint")))
    broken.slot.load_now()  # in this thread, as the Space loads
    try:
        broken.run_in_worker(accept(text_query, images, broken.slot.limits))
        crossed = None
    except GpuUserError as exc:  # as the worker would send it: through spaces' own result type, pickled
        result = pickle.loads(pickle.dumps(exception_result(exc)))
        crossed = {"gradio_error": type(result.gradio_error).__name__, "message": result.gradio_error.message,
                   "key": result.gradio_error.user_error().key}
    print(json.dumps({
        "status": slot.status_line("en"), "device": str(engine.device), "parameter_device": str(
            next(engine.model.parameters()).device), "dtype": engine.dtype_name,
        "text_query": first, "second_query": second, "image_query": image_query,
        "vision_tower_calls": tower_calls, "crossed_error": crossed, "gpu_functions": gpu_functions,
        "explanation": {"score": explanation.score, "grid": explanation.grid, "passes": explanation.forward_passes}}))


if __name__ == "__main__":
    main(sys.argv[1:])
