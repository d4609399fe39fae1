"""``python -m tests.rest_server PORT``: the web app on the tiny random checkpoint at 127.0.0.1:PORT, run by
the project's own venv for the suites that live in venvs of their own (the vLLM conformance suite, the
third-party clients), which have no torch or gradio of lychee's versions. Serves until it is stopped."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

APP_MAX_IMAGES = 8  # as tests/conftest.py's demo: small, so the limit is cheap to hit


def main() -> None:
    from lychee.limits import Limits
    from lychee.random_checkpoint import build_random_checkpoint
    from lychee.web.app import build_demo
    from lychee.web.model_slot import ModelSlot
    from lychee.web.server import launch_options

    checkpoint = build_random_checkpoint(Path(tempfile.mkdtemp(prefix="tiny-qwen2.5-vl-")), "tiny", seed=0)
    slot = ModelSlot(str(checkpoint), device="cpu", dtype="fp32", limits=Limits(max_images=APP_MAX_IMAGES))
    slot.load_now()
    build_demo(slot).launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), quiet=True,
                            **launch_options(slot.limits))


if __name__ == "__main__":
    main()
