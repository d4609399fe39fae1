"""What a stored score depends on: one key per (query, document) pair, or none at all.

A key is the SHA-256 of everything that can change the score:

- the model's identity: a hub model's id and the revision (commit) its files come from, or a
  local checkpoint's content hash (every file: weights, config, tokenizer, chat template);
- the backend and its dtype (bf16 and fp32 scores differ; so may two engines);
- the pixel budget every image is resized into;
- the prompt's messages (:mod:`lychee.protocol`): system prompt, instruction, query text and
  the document's layout and text, as :func:`lychee.protocol.with_document` lays them out;
- the pixels of the query image and of the document image, hashed as they are scored (a
  document image at its budget size; the query image before the backend fits it to the budget,
  which the budget in the key decides).

When the model's identity cannot be known - a hub model whose revision is not in the local
cache, a vLLM server's weights - :func:`model_identity` gives None and nothing is stored or
looked up: no caching, never a wrong hit. Pure: no torch, no gradio.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from PIL import Image

from .backends.vision_cache import image_digest
from .images import PixelBudget
from .protocol import with_document

log = logging.getLogger(__name__)

KEY_VERSION = 1  # changes when what a key covers changes, so older rows are never read as current
CHUNK_BYTES = 2**24


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=8)
def _folder_digest(folder: Path, listing: tuple[tuple[str, int, int], ...]) -> str:
    """SHA-256 over the folder's files (their names and contents); ``listing`` (name, size,
    mtime) is part of the cache key, so a file written since is hashed again."""
    digest = hashlib.sha256()
    for name, _, _ in listing:
        digest.update(f"{name}\0{_file_digest(folder / name)}\0".encode())
    return digest.hexdigest()


def checkpoint_digest(folder: str | os.PathLike) -> str:
    """The content hash of a local checkpoint: every file under ``folder`` but hidden ones, by
    path and bytes (a 7B's 16 GB take some seconds, once per process and change)."""
    root = Path(folder).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    listing = tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _folder_digest(root, listing)


def hub_revision(model_id: str) -> str | None:
    """The commit the local Hugging Face cache resolves ``model_id`` to (what ``from_pretrained``
    loaded), or None when the cache does not have it."""
    try:
        cached = try_to_load_from_cache(model_id, "config.json")
    except ValueError:  # not a valid repository id
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None


def model_identity(backend: str, model_id: str) -> str | None:
    """The model's identity for a key, or None when it cannot be known (see the module docstring)."""
    if backend == "vllm-server":
        return None  # the server's weights and their revision are not visible from here
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return f"sha256:{checkpoint_digest(folder)}"
    revision = hub_revision(model_id)
    return f"{model_id}@{revision}" if revision else None


def _sha256(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def pair_keys(identity: str, *, backend: str, dtype: str, budget: PixelBudget, messages: list[dict],
              query_image: Image.Image | None, images: Sequence[Image.Image | None],
              texts: Sequence[str]) -> list[str]:
    """The key of each document (``images[i]``, None for none, with ``texts[i]``, "" for none)
    under one query's ``messages`` (:func:`lychee.protocol.rerank_messages`)."""
    query = _sha256(str(KEY_VERSION), identity, backend, dtype, json.dumps(list(budget)),
                    image_digest(query_image) if query_image is not None else "")
    return [_sha256(query, json.dumps(with_document(messages, image=image is not None, text=text),
                                      ensure_ascii=False, sort_keys=True),
                    image_digest(image) if image is not None else "")
            for image, text in zip(images, texts)]
