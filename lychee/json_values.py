"""How many values a JSON text holds, counted on its bytes without parsing it (no Python objects).

Parsed JSON costs far more memory than its text when it is made of many small values
(``[{},{},...]``: about 64 bytes a dict for 3 bytes of text), so a body within the byte cap
can still cost gigabytes once parsed; counting first bounds that cost.
"""

from __future__ import annotations


def count_values(body: bytes, limit: int) -> int:
    """An upper bound on the values in ``body`` - one per string (object keys included), per
    separator and per opening bracket, plus one - counted until it passes ``limit``, so the work
    is bounded by ``limit`` steps of C-speed scans whatever the body holds."""
    # Without escaped backslashes and quotes, every quote left opens or closes a string.
    bare = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    count, start = 1, 0
    while count <= limit:
        quote = bare.find(b'"', start)
        end = len(bare) if quote < 0 else quote
        count += bare.count(b",", start, end) + bare.count(b"[", start, end) + bare.count(b"{", start, end)
        closing = bare.find(b'"', quote + 1) if quote >= 0 else -1
        if closing < 0:  # no more strings (or one never closed: not JSON, which the route refuses)
            break
        count += 1
        start = closing + 1
    return count
