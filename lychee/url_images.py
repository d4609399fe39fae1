"""Candidate images named by URL (the ``rerank_urls`` API and MCP tool), fetched safely.

Fetching a URL that a stranger chose is a server-side request forgery risk on a public
Space, so every URL is judged before a byte is read:

- ``data:`` URIs (base64) are decoded in memory, size-checked before decoding;
- ``http``/``https`` hosts are resolved and must be public addresses: loopback, private,
  link-local (cloud metadata at 169.254.169.254), multicast, reserved and unspecified
  addresses are refused, IPv4-mapped IPv6 included; the connection is pinned to the
  address that was checked (``safehttpx``, by the Gradio team: no DNS rebinding);
- redirects are followed by hand, at most :data:`MAX_REDIRECTS`, each target judged again;
- the body is streamed and cut off at ``LYCHEE_MAX_FILE_BYTES``; each URL has
  ``LYCHEE_URL_TIMEOUT_S`` seconds in all; other schemes (``file:``, ``ftp:``) are refused.

Every refusal or failure is an :class:`~lychee.images.ImageLoadError` for that one image;
the other images are still ranked. qwen-vl-utils' ``fetch_image`` is not used here: it
follows any URL without these checks and decodes without our size limits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import httpx
import safehttpx

from .images import ImageLoadError
from .limits import Limits, env_name

MAX_REDIRECTS = 3
PARALLEL_FETCHES = 4
_DATA_URI = re.compile(r"data:(?P<type>[\w.+/-]*)(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,(?P<data>.*)",
                       re.DOTALL | re.IGNORECASE)


def url_label(url: str, index: int) -> str:
    """A short name for the image at ``url``: the last part of its path, else ``image N``."""
    if url.lower().startswith(("http://", "https://")):
        name = PurePosixPath(unquote(urlsplit(url).path)).name
        if name:
            return name[:120]
    return f"image {index + 1}"


def is_public_address(address: str) -> bool:
    """True for a globally routable IP address (IPv4-mapped IPv6 judged by its IPv4 part)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return safehttpx.is_public_ip(str(ip)) and not ip.is_unspecified and ip.is_global


def decode_data_uri(uri: str, limits: Limits) -> bytes:
    """The bytes of a ``data:`` URI; ``ImageLoadError`` if it is malformed or over the size limit."""
    match = _DATA_URI.fullmatch(uri.strip())
    if match is None or not match["b64"]:
        raise ImageLoadError("not a base64 data: URI (expected data:image/...;base64,...)")
    encoded = re.sub(r"\s+", "", match["data"])
    if len(encoded) * 3 // 4 > limits.max_file_bytes:
        raise ImageLoadError(f"data URI holds more than {limits.max_file_bytes:,} bytes, the limit "
                             f"({env_name('max_file_bytes')})")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ImageLoadError("data URI is not valid base64") from None


async def _public_address(host: str) -> str:
    """The public address to connect to for ``host``; ``ImageLoadError`` when it has none."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        if not is_public_address(str(literal)):
            raise ImageLoadError(f"refused URL: {host} is not a public address")
        return str(literal)
    try:
        address = await safehttpx.async_validate_url(host)
    except ValueError:
        raise ImageLoadError(f"refused URL: {host} does not resolve to a public address") from None
    if not is_public_address(address):
        raise ImageLoadError(f"refused URL: {host} does not resolve to a public address")
    return address


async def _download(url: str, limits: Limits) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ImageLoadError(f"refused URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ImageLoadError(f"refused URL: only http, https and data: URLs are accepted, got {url[:80]!r}")
        transport = safehttpx.AsyncSecureTransport(await _public_address(parsed.host))
        async with httpx.AsyncClient(transport=transport, follow_redirects=False) as client, \
                client.stream("GET", url) as response:
            if response.is_redirect:
                url = urljoin(url, response.headers.get("location", ""))
                continue
            if response.status_code != 200:
                raise ImageLoadError(f"download failed: HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limits.max_file_bytes:
                    raise ImageLoadError(f"download is larger than {limits.max_file_bytes:,} bytes, the limit "
                                         f"({env_name('max_file_bytes')})")
            return bytes(body)
    raise ImageLoadError(f"refused URL: more than {MAX_REDIRECTS} redirects")


async def fetch_image(url: str, limits: Limits) -> bytes:
    """The bytes of the image at ``url`` (``data:``, ``http``, ``https``), fetched under the
    rules in the module docstring; every failure is an :class:`ImageLoadError`."""
    if not isinstance(url, str) or not url.strip():
        raise ImageLoadError("empty URL")
    url = url.strip()
    if url[:5].lower() == "data:":
        return decode_data_uri(url, limits)
    try:
        return await asyncio.wait_for(_download(url, limits), timeout=limits.url_timeout_s)
    except asyncio.TimeoutError:
        raise ImageLoadError(f"download took longer than {limits.url_timeout_s} s "
                             f"({env_name('url_timeout_s')})") from None
    except httpx.HTTPError as exc:
        raise ImageLoadError(f"download failed ({type(exc).__name__})") from None


def fetch_images(urls: Sequence[str], limits: Limits) -> list[bytes | ImageLoadError]:
    """Fetch every URL, a few at a time; each slot holds the bytes or why they could not be had."""
    async def run() -> list[bytes | ImageLoadError]:
        gate = asyncio.Semaphore(PARALLEL_FETCHES)

        async def one(url: str) -> bytes | ImageLoadError:
            async with gate:
                try:
                    return await fetch_image(url, limits)
                except ImageLoadError as exc:
                    return exc

        return await asyncio.gather(*(one(url) for url in urls))

    return asyncio.run(run())
