"""A validated rerank request: what to judge and how to rank, checked once at the surface.

Every surface - the Python API, the CLI, the web page and its two API routes - turns what
it was given into a :class:`Request` with :func:`build_request` and hands that down to
scoring and ranking, which trust it and check nothing again:

- :class:`Query`: the cleaned query text and instruction (``lychee.query``), the notices of
  what cleaning changed, and the reference image, decoded once by the safe loader;
- :class:`~lychee.settings.Settings`: valid by construction, the preset's defaults filled in.

The candidate images are not part of it: each surface brings its own (uploads, URLs
fetched after the request was accepted, a folder scored in chunks). Pure: no torch, no gradio.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from .images import ImageSource, load_query_image, source_label
from .limits import Limits
from .messages import Notice
from .protocol import QueryKind, query_kind
from .query import prepare_text
from .settings import Settings


@dataclass(frozen=True)
class Query:
    """What the candidates are judged against; build it with :func:`prepare_query`."""

    text: str                           # cleaned; "" when the query is an image alone
    instruction: str | None             # cleaned; None: the protocol's default for the query's kind
    image: Image.Image | None = None    # the reference image, decoded and pre-scaled
    image_label: str | None = None      # its name (a file name, or "image 1")
    notices: tuple[Notice, ...] = ()    # what cleaning changed, for the user

    @property
    def kind(self) -> QueryKind:
        """``text``, ``image`` or ``image+text``."""
        return query_kind(self.text, self.image is not None)


@dataclass(frozen=True)
class Request:
    """A validated request: its :class:`Query` and its :class:`~lychee.settings.Settings`."""

    query: Query
    settings: Settings

    def __post_init__(self) -> None:
        if not isinstance(self.query, Query) or not isinstance(self.settings, Settings):
            raise TypeError("build a Request with build_request()")

    @property
    def notices(self) -> tuple[Notice, ...]:
        return self.query.notices


def prepare_query(text: str | None, *, instruction: str | None = None, image: ImageSource | None = None,
                  image_label: str | None = None, max_side: int, limits: Limits) -> Query:
    """Clean ``text`` and ``instruction`` and decode the reference ``image`` (at most ``max_side``).

    Refusals are :class:`~lychee.messages.UserError`: an empty query without an image,
    text that is not text, a reference image that cannot be read (``bad_query_image``).
    """
    prompt = prepare_text(text, instruction, limits, image_query=image is not None)
    if image is None:
        return Query(prompt.query, prompt.instruction, notices=prompt.notices)
    decoded = load_query_image(image, max_side=max_side, limits=limits)
    return Query(prompt.query, prompt.instruction, decoded, image_label or source_label(image, 0), prompt.notices)


def build_request(text: str | None, settings: Settings, limits: Limits, *, instruction: str | None = None,
                  image: ImageSource | None = None, image_label: str | None = None) -> Request:
    """The one :class:`Request` of a surface: the query prepared at ``settings.max_side``."""
    query = prepare_query(text, instruction=instruction, image=image, image_label=image_label,
                          max_side=settings.max_side, limits=limits)
    return Request(query, settings)
