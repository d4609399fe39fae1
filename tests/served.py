"""The web app as a separate server process, and its memory: what the hardening tests measure.

``python -m tests.served`` serves ``app.py``'s demo with one change: host names under
:data:`TEST_DOMAIN` count as public hosts at 127.0.0.1, so test servers on loopback can
stand for the internet - for lychee's fetcher, and for Gradio's own downloader (which
fetches the address 127.0.0.1 itself, as it would a public host). Every other address is
judged as in production.
"""

from __future__ import annotations

import re
import select
import socket
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

TEST_DOMAIN = ".example"  # e.g. images.example: served by a test server on 127.0.0.1


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM) since start or the last :func:`reset_peak`."""
    return _status_kb(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    """The process's resident memory now (VmRSS)."""
    return _status_kb(pid, "VmRSS") / 1024


def reset_peak(pid: int) -> None:
    """Start the peak (VmHWM) afresh from the current resident memory."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def rerank_urls(url: str, query: str, urls: list[str]) -> dict:
    """One ``/rerank_urls`` call to the app at ``url`` through a real ``gradio_client``."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    try:
        return client.predict(query, urls, api_name="/rerank_urls")
    finally:
        client.close()


def _status_kb(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def post(url: str, chunks: Iterable[bytes], *, content_type: str = "application/json",
         content_length: int | None = None, timeout_s: float = 30.0) -> tuple[int, bytes, int]:
    """POST ``chunks`` to ``url`` over a plain socket, chunked unless ``content_length`` is given;
    stops sending as soon as the server answers. Returns the status, the body and the bytes sent."""
    parts = urlsplit(url)
    framing = f"Content-Length: {content_length}" if content_length is not None else "Transfer-Encoding: chunked"
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"{framing}\r\nConnection: close\r\n\r\n").encode()
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered: no point sending the rest
                sock.sendall(chunk if content_length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            else:
                if content_length is None:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after answering
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2], sent


def main() -> None:
    from gradio import processing_utils

    from lychee import ui, url_images

    judge = url_images._public_address

    async def public_address(host: str) -> str:
        return "127.0.0.1" if host.endswith(TEST_DOMAIN) else await judge(host)

    url_images._public_address = public_address
    processing_utils.PUBLIC_HOSTNAME_WHITELIST.append("127.0.0.1")
    ui.main()


if __name__ == "__main__":
    main()
