"""Candidate images named by URL (the ``rerank_urls`` API and MCP tool), fetched safely.

Fetching a URL that a stranger chose is a server-side request forgery risk on a public
Space, so every URL is judged before a byte is read:

- ``data:`` URIs (base64) are decoded in memory, size-checked before decoding;
- ``http``/``https`` host names are looked up with the system resolver only (never DNS
  over HTTPS: names stay private), on a few threads of their own and within the request's
  deadline, and every address they resolve to must be globally routable
  (:func:`is_public_address`: no loopback, private, link-local or cloud-metadata address,
  also not wrapped in IPv4-mapped, 6to4, Teredo or NAT64 addresses); the connection is
  pinned to the address that was checked (no DNS rebinding);
- redirects are followed by hand, at most :data:`MAX_REDIRECTS`, each target judged again;
- bodies are asked for uncompressed or gzip/deflate, which are unpacked here with the
  output counted as it is produced; any other encoding (brotli, zstd) is refused, so a
  small compressed body can never unpack into gigabytes;
- each body is cut off at ``LYCHEE_MAX_FILE_BYTES``, and all the images of one request
  together at ``LYCHEE_MAX_REQUEST_IMAGE_BYTES``, counted as it is unpacked, a small piece at
  a time (no download ever holds more than either);
- the URLs of one request, its reference image's included, are fetched concurrently under one
  deadline, ``LYCHEE_URL_TIMEOUT_S``, on the process's own fetch loop (:mod:`lychee.fetch_loop`:
  at most ``LYCHEE_FETCH_CONCURRENCY`` requests at once, 2 per client); other schemes
  (``file:``, ``ftp:``) are refused.

Every refusal or failure, whatever raised it, is an :class:`~lychee.images.ImageLoadError`
for that one image; the other images are still ranked. qwen-vl-utils' ``fetch_image`` is
not used here: it follows any URL without these checks and decodes without our limits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import re
import socket
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import httpx
import safehttpx

from .fetch_loop import FETCH_LOOP
from .images import ImageLoadError
from .limits import Limits, env_name
from .messages import printable

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
PARALLEL_FETCHES = 16  # URLs of one request in flight at once
DECODE_STEP_BYTES = 2 ** 16  # a compressed body is unpacked this much at a time, each piece counted
RESOLVER_THREADS = 8   # system lookups in flight at once, for the whole process
ACCEPT_ENCODING = "gzip, deflate"
_DATA_URI = re.compile(r"data:(?P<type>[\w.+/-]*)(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,(?P<data>.*)",
                       re.DOTALL | re.IGNORECASE)
_HOST_NAME = re.compile(r"(?=.{1,253}$)(?!-)[\w-]{1,63}(?<!-)(?:\.(?!-)[\w-]{1,63}(?<!-))*\.?", re.ASCII)
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

# Only globally routable unicast space is public: IANA's special-purpose registries, for IPv4
# everything outside the public space, for IPv6 everything outside 2000::/3 and the special blocks in it.
_NOT_PUBLIC_V4 = tuple(map(ipaddress.IPv4Network, (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16", "192.175.48.0/24",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4")))
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NOT_PUBLIC_V6 = tuple(map(ipaddress.IPv6Network, (
    "2001::/23", "2001:db8::/32", "2002::/16", "2620:4f:8000::/48", "3fff::/20", "5f00::/16")))
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def url_label(url: str, index: int) -> str:
    """A short name for the image at ``url``: the last part of its path, else ``image N``."""
    if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
        name = PurePosixPath(unquote(urlsplit(url).path)).name
        if name:
            return name[:120]
    return f"image {index + 1}"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for: IPv4-mapped, 6to4, Teredo (server and
    client) and NAT64 (64:ff9b::/96) addresses carry one inside."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return []


def is_public_address(address: str) -> bool:
    """True only for a globally routable unicast IP address; an IPv6 address that wraps an
    IPv4 one (IPv4-mapped, 6to4, Teredo, NAT64) is judged by what it wraps."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return not any(ip in network for network in _NOT_PUBLIC_V4)
    embedded = _embedded_ipv4(ip)
    if embedded:
        return all(is_public_address(str(v4)) for v4 in embedded)
    return ip in _GLOBAL_UNICAST_V6 and not any(ip in network for network in _NOT_PUBLIC_V6)


class ImageBudget:
    """The image bytes one request may hold in memory together (``LYCHEE_MAX_REQUEST_IMAGE_BYTES``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        """Count ``size`` more bytes; ``ImageLoadError`` (and nothing counted) when they do not fit."""
        if self.used + size > self.limit:
            raise ImageLoadError("url_request_budget", limit=f"{self.limit:,}",
                                 variable=env_name("max_request_image_bytes"))
        self.used += size

    def give_back(self, size: int) -> None:
        self.used -= size


def decode_data_uri(uri: str, limits: Limits, budget: ImageBudget | None = None) -> bytes:
    """The bytes of a ``data:`` URI; ``ImageLoadError`` if it is malformed or over a size limit."""
    match = _DATA_URI.fullmatch(uri.strip())
    if match is None or not match["b64"]:
        raise ImageLoadError("url_not_data_uri")
    encoded = re.sub(r"\s+", "", match["data"])
    size = len(encoded) * 3 // 4
    if size > limits.max_file_bytes:
        raise ImageLoadError("url_data_too_large", limit=f"{limits.max_file_bytes:,}",
                             variable=env_name("max_file_bytes"))
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ImageLoadError("url_bad_base64") from None
    if budget is not None:
        budget.take(len(data))
    return data


def resolve_host(host: str) -> list[str]:
    """Every address the system resolver gives for ``host`` (blocking; run on the resolver threads)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)))


_resolver = ThreadPoolExecutor(max_workers=RESOLVER_THREADS, thread_name_prefix="lychee-resolve")


async def _public_address(host: str) -> str:
    """The checked address to connect to for ``host``; ``ImageLoadError`` when it has none.

    A lookup that does not come back is abandoned at the request's deadline (its thread is
    left to finish on its own), so a silent resolver costs that image, never a hang."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        if not is_public_address(str(literal)):
            raise ImageLoadError("url_not_public", host=host)
        return str(literal)
    if not _HOST_NAME.fullmatch(host):
        raise ImageLoadError("url_bad_host", host=repr(host[:80]))
    try:
        addresses = await asyncio.wrap_future(_resolver.submit(resolve_host, host))
    except (OSError, UnicodeError):
        raise ImageLoadError("url_no_address", host=host) from None
    if not addresses:
        raise ImageLoadError("url_no_address", host=host)
    internal = [a for a in addresses if not is_public_address(a)]
    if internal:
        raise ImageLoadError("url_resolves_internal", host=host, address=internal[0])
    return addresses[0]


def _decoder(encoding: str) -> Callable[[bytes], Iterator[bytes]]:
    """``decode(chunk)`` for a ``Content-Encoding``: the decoded bytes in pieces of at most
    :data:`DECODE_STEP_BYTES`, so that each piece is counted before the next is made."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return lambda chunk: iter((chunk,))
    if encoding not in _ZLIB_WBITS:
        raise ImageLoadError("url_encoding", encoding=encoding[:20])
    state = {"inflate": zlib.decompressobj(_ZLIB_WBITS[encoding]), "first": True}

    def inflate(data: bytes) -> bytes:
        try:
            return state["inflate"].decompress(data, DECODE_STEP_BYTES)
        except zlib.error:
            if encoding == "deflate" and state["first"]:  # some servers send raw deflate, without the zlib header
                state["inflate"] = zlib.decompressobj(-zlib.MAX_WBITS)
                state["first"] = False
                return state["inflate"].decompress(data, DECODE_STEP_BYTES)
            raise ImageLoadError("url_damaged_body") from None
        finally:
            state["first"] = False

    def decode(chunk: bytes) -> Iterator[bytes]:
        data = chunk
        while data:
            yield inflate(data)
            data = state["inflate"].unconsumed_tail

    return decode


async def _read_body(response: httpx.Response, limits: Limits, budget: ImageBudget) -> bytes:
    """The decoded body, counted piece by piece as it is decoded: cut off at the file limit and
    the request's budget, so one download never holds more than either (plus one piece)."""
    decode = _decoder(response.headers.get("content-encoding", ""))
    body = bytearray()
    try:
        async for chunk in response.aiter_raw():
            for data in decode(chunk):
                if len(body) + len(data) > limits.max_file_bytes:
                    raise ImageLoadError("url_too_large", limit=f"{limits.max_file_bytes:,}",
                                         variable=env_name("max_file_bytes"))
                budget.take(len(data))
                body += data
    except BaseException:
        budget.give_back(len(body))
        raise
    return bytes(body)


def _checked_url(url: str) -> tuple[httpx.URL, str]:
    """The parsed URL and its host name; ``ImageLoadError`` for a URL no request can be made to."""
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decoded lazily: IDNA errors surface here
    except (httpx.InvalidURL, ValueError) as exc:  # IDNA errors are ValueErrors
        raise ImageLoadError("url_invalid", reason=str(exc)[:120]) from None
    if parsed.scheme not in ("http", "https") or not host:
        raise ImageLoadError("url_bad_scheme", url=repr(url[:80]))
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ImageLoadError("url_bad_port", port=parsed.port)
    return parsed, host


async def _download(url: str, limits: Limits, budget: ImageBudget) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        parsed, host = _checked_url(url)
        transport = safehttpx.AsyncSecureTransport(await _public_address(host))
        async with httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False,
                                     headers={"Accept-Encoding": ACCEPT_ENCODING}) as client, \
                client.stream("GET", parsed) as response:
            if response.is_redirect:
                url = urljoin(url, response.headers.get("location", ""))
                continue
            if response.status_code != 200:
                raise ImageLoadError("url_http_status", status=response.status_code)
            return await _read_body(response, limits, budget)
    raise ImageLoadError("url_redirects", count=MAX_REDIRECTS)


def _failure(exc: BaseException) -> ImageLoadError:
    """Any other failure of one download, said in one line (no traceback, no internals)."""
    leaves = list(getattr(exc, "exceptions", ())) or [exc]
    first = leaves[0]
    if isinstance(first, ImageLoadError):
        return first
    log.info("download failed: %s: %s", type(first).__name__, printable(first))
    key = "url_connection_failed" if isinstance(first, (OSError, httpx.TransportError)) else "url_download_failed"
    return ImageLoadError(key, error=type(first).__name__)


async def fetch_image(url: str, limits: Limits, budget: ImageBudget | None = None) -> bytes:
    """The bytes of the image at ``url`` (``data:``, ``http``, ``https``), fetched under the
    rules in the module docstring, within the caller's deadline; every failure is an
    :class:`ImageLoadError`."""
    budget = budget or ImageBudget(limits.max_request_image_bytes)
    if not isinstance(url, str) or not url.strip():
        raise (ImageLoadError("url_empty") if isinstance(url, str) or url is None
               else ImageLoadError("url_not_text", type=type(url).__name__))
    url = url.strip()
    if url[:5].lower() == "data:":
        return decode_data_uri(url, limits, budget)
    try:
        return await _download(url, limits, budget)
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - sockets, TLS, HTTP and URL parsing fail in many ways; each is this image's
        raise _failure(exc) from None


def _deadline(limits: Limits, deadline: float | None) -> float:
    return time.monotonic() + limits.url_timeout_s if deadline is None else deadline


def fetch_images(urls: Sequence[str], limits: Limits, *, deadline: float | None = None,
                 client: str = "") -> list[bytes | ImageLoadError]:
    """Fetch every URL of one request, concurrently, all by one deadline (a ``time.monotonic()``
    value; by default ``LYCHEE_URL_TIMEOUT_S`` from now: pass the same one to every call of a
    request); each slot holds the bytes or why they could not be had. Runs on the process's
    fetch loop (:mod:`lychee.fetch_loop`) while this thread waits; :class:`FetchBusy` when
    ``client`` or the process has no place to fetch."""
    return FETCH_LOOP.run(_fetch_all(urls, limits, _deadline(limits, deadline), client))


async def fetch_images_async(urls: Sequence[str], limits: Limits, *, deadline: float | None = None,
                             client: str = "") -> list[bytes | ImageLoadError]:
    """:func:`fetch_images` for a caller on an event loop: it awaits, holding no thread."""
    return await FETCH_LOOP.wait(_fetch_all(urls, limits, _deadline(limits, deadline), client))


def _is_data_uri(url: object) -> bool:
    return isinstance(url, str) and url.strip()[:5].lower() == "data:"


async def _fetch_all(urls: Sequence[str], limits: Limits, deadline: float,
                     client: str) -> list[bytes | ImageLoadError]:
    budget = ImageBudget(limits.max_request_image_bytes)
    gate = asyncio.Semaphore(PARALLEL_FETCHES)

    async def one(url: str) -> bytes | ImageLoadError:
        try:
            async with asyncio.timeout_at(deadline):
                if _is_data_uri(url):
                    return await fetch_image(url, limits, budget)  # no network: it never waits for a slot
                async with gate:
                    return await fetch_image(url, limits, budget)
        except ImageLoadError as exc:
            return exc
        except TimeoutError:
            return ImageLoadError("url_timeout", seconds=limits.url_timeout_s, variable=env_name("url_timeout_s"))

    async def every() -> list[bytes | ImageLoadError]:
        return await asyncio.gather(*(one(url) for url in urls))

    if all(_is_data_uri(url) for url in urls):
        return await every()
    async with FETCH_LOOP.places.hold(client, limits.fetch_concurrency, deadline):
        return await every()
