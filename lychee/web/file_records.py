"""Which file records of a call name files this server may read: the one guard of every event that
takes a file, an image or a gallery (no gradio import: the upload folder is passed in).

A Gradio file record is a JSON object with a ``path``. Gradio itself downloads a record whose
path is a URL (no timeout, no size limit, into its cache) and reads any path it is given when
the event has no preprocessing; so a record is taken only when its path is a file under the
server's upload folder, where uploads and Gradio's own cache live.
"""

from __future__ import annotations

import os
from typing import Any


def is_url(path: str) -> bool:
    """A ``scheme://`` path (http, https, ftp, file...): never a file uploaded here."""
    scheme, separator, _ = path.partition("://")
    return bool(separator) and scheme.isascii() and scheme.isalpha()


def inside(path: str, folder: str) -> bool:
    """``path``, with every link and ``..`` resolved, is under ``folder``."""
    root = os.path.realpath(folder)
    try:
        return os.path.commonpath([root, os.path.realpath(path)]) == root
    except ValueError:  # a NUL byte in the path
        return False


def foreign_file(data: Any, folder: str) -> str | None:
    """The message key refusing the first file record in ``data`` (JSON values, nested at any depth)
    whose ``path`` is a URL (``file_path_is_url``) or not under ``folder`` (``file_not_uploaded``);
    None when every record names an uploaded file."""
    stack = [data]  # a stack, not recursion: a deeply nested body must not overflow Python's
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            path = value.get("path")
            if isinstance(path, str):
                if is_url(path):
                    return "file_path_is_url"
                if not inside(path, folder):
                    return "file_not_uploaded"
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return None
