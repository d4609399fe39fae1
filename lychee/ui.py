"""The web demo's long-standing import path; the demo lives in :mod:`lychee.web`."""

from .web.app import RerankDemo, build_demo
from .web.server import launch_options, main

__all__ = ["RerankDemo", "build_demo", "launch_options", "main"]
