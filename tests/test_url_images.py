"""Images given by URL (the ``rerank_urls`` endpoint): data: URIs decode, and nothing but a
public address is ever fetched - checked against loopback, private, link-local, IPv6,
IPv4-mapped, decimal-IP and redirect tricks, with real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from lychee import url_images
from lychee.images import ImageLoadError
from lychee.limits import Limits
from lychee.url_images import decode_data_uri, fetch_image, fetch_images, is_public_address, url_label

from .conftest import make_image

LIMITS = Limits(max_file_bytes=50_000, url_timeout_s=2)
PNG = make_image(20, 10, (200, 30, 30))
PUBLIC_HOST = "images.example"  # stands for a public host; it is served by the test server


def data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "10.0.0.7", "172.16.3.4", "192.168.1.1", "169.254.169.254", "0.0.0.0",
    "::", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "100.64.0.1", "224.0.0.1",
    "255.255.255.255", "not an address",
    # 6to4 around loopback and cloud metadata, Teredo with a private client, NAT64 and
    # IPv4-compatible forms of loopback, site-local, IETF-reserved, documentation, discard
    "2002:7f00:1::1", "2002:a9fe:a9fe::1", "2001:0:4136:e378:8000:63bf:f5ff:fffe", "64:ff9b::7f00:1", "::7f00:1",
    "fec0::1", "192.0.0.8", "192.0.0.9", "192.0.2.1", "198.18.0.1", "2001:db8::1", "100::1", "ff02::1", "3fff::1"])
def test_non_public_addresses_are_refused(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2002:808:808::1",
                                     "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert is_public_address(address)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x.png", "http://localhost/x.png", "http://[::1]/x.png", "http://2130706433/x.png",
    "http://0x7f000001/x.png", "http://0177.0.0.1/x.png", "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]/x.png", "http://10.0.0.1/x.png", "http://0/x.png"])
def test_urls_of_internal_hosts_are_refused_before_any_request(url):
    (outcome,) = fetch_images([url], LIMITS)
    assert isinstance(outcome, ImageLoadError) and "refused URL" in str(outcome)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://x/", "javascript:1"])
def test_other_schemes_are_refused(url):
    (outcome,) = fetch_images([url], LIMITS)
    assert isinstance(outcome, ImageLoadError) and "only http, https and data: URLs" in str(outcome)


def test_a_data_uri_decodes_to_its_bytes():
    assert decode_data_uri(data_uri(PNG), LIMITS) == PNG
    assert fetch_images([data_uri(PNG)], LIMITS) == [PNG]


@pytest.mark.parametrize(("uri", "message"), [
    ("data:image/png,rawtext", "not a base64 data: URI"),
    ("data:image/png;base64,!!!notbase64", "not valid base64"),
    (data_uri(b"x" * 60_000), "more than 50,000 bytes"),
])
def test_bad_data_uris_are_specific_errors(uri, message):
    with pytest.raises(ImageLoadError, match=message):
        decode_data_uri(uri, LIMITS)


def test_labels_are_the_url_file_name_or_the_position():
    assert url_label("https://example.com/photos/cat%20one.jpg?size=2", 0) == "cat one.jpg"
    assert url_label(data_uri(PNG), 4) == "image 5"
    assert url_label("https://example.com/", 1) == "image 2"


class Handler(http.server.BaseHTTPRequestHandler):
    """/img.png: an image; /big: too many bytes; /slow: no answer in time; /to-*: redirects."""

    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path == "/slow":
            time.sleep(4)
        status, headers, body = self.routes.get(self.path, (404, {}, b"not found"))
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timed out, or stopped reading at the size limit), as tested

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = httpd.server_address[1]
    Handler.routes = {
        "/img.png": (200, {"Content-Type": "image/png"}, PNG),
        "/big": (200, {}, b"x" * 60_000),
        "/to-img": (302, {"Location": "/img.png"}, b""),
        "/to-loopback": (302, {"Location": f"http://127.0.0.1:{port}/img.png"}, b""),
        "/to-metadata": (301, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
        "/to-ipv6": (307, {"Location": f"http://[::1]:{port}/img.png"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
        "/to-bad-port": (302, {"Location": f"http://{PUBLIC_HOST}:99999/img.png"}, b""),
    }
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield port
    httpd.shutdown()


@pytest.fixture
def public_test_host(monkeypatch):
    """Judge addresses for real, except that PUBLIC_HOST counts as a public host served on 127.0.0.1."""
    judge = url_images._public_address

    async def public_address(host: str) -> str:
        return "127.0.0.1" if host == PUBLIC_HOST else await judge(host)

    monkeypatch.setattr(url_images, "_public_address", public_address)


def fetch(url: str) -> bytes | ImageLoadError:
    return fetch_images([url], LIMITS)[0]


def test_a_public_image_is_fetched_and_a_redirect_on_the_same_host_followed(server, public_test_host):
    assert fetch(f"http://{PUBLIC_HOST}:{server}/img.png") == PNG
    assert fetch(f"http://{PUBLIC_HOST}:{server}/to-img") == PNG


@pytest.mark.parametrize("path", ["/to-loopback", "/to-metadata", "/to-ipv6"])
def test_a_redirect_to_an_internal_address_is_refused(server, public_test_host, path):
    outcome = fetch(f"http://{PUBLIC_HOST}:{server}{path}")
    assert isinstance(outcome, ImageLoadError) and "refused URL" in str(outcome)


def test_endless_redirects_stop(server, public_test_host):
    assert "more than 3 redirects" in str(fetch(f"http://{PUBLIC_HOST}:{server}/loop"))


def test_a_body_over_the_size_limit_is_cut_off(server, public_test_host):
    assert "larger than 50,000 bytes" in str(fetch(f"http://{PUBLIC_HOST}:{server}/big"))


def test_a_slow_server_times_out(server, public_test_host):
    started = time.monotonic()
    outcome = fetch(f"http://{PUBLIC_HOST}:{server}/slow")
    assert "longer than 2 s (LYCHEE_URL_TIMEOUT_S)" in str(outcome)
    assert time.monotonic() - started < 3.5


def test_http_errors_are_per_image_errors_and_the_rest_still_arrive(server, public_test_host):
    urls = [f"http://{PUBLIC_HOST}:{server}/missing.png", data_uri(PNG), f"http://127.0.0.1:{server}/img.png"]
    missing, good, loopback = fetch_images(urls, LIMITS)
    assert "HTTP 404" in str(missing) and good == PNG and "not a public address" in str(loopback)


def test_fetch_image_rejects_empty_input():
    import asyncio

    with pytest.raises(ImageLoadError, match="empty URL"):
        asyncio.run(fetch_image("  ", LIMITS))


@pytest.mark.parametrize(("url", "message"), [
    ("http://xn--localhost-/a.png", "refused URL: A-label must not end with a hyphen"),
    ("http://images.example:99999/a.png", "port 99999 is not a valid port"),
    ("http://exa mple.com/a.png", "is not a valid host name"),
    ("http://[::1/a.png", "refused URL"),
    ("http://a..b/x.png", "is not a valid host name"),
])
def test_a_malformed_url_is_that_images_error_and_the_rest_arrive(url, message):
    bad, good = fetch_images([url, data_uri(PNG)], LIMITS)
    assert isinstance(bad, ImageLoadError) and message in str(bad) and good == PNG


def test_a_redirect_to_an_impossible_port_is_that_images_error(server, public_test_host):
    bad, good = fetch_images([f"http://{PUBLIC_HOST}:{server}/to-bad-port", data_uri(PNG)], LIMITS)
    assert "port 99999 is not a valid port" in str(bad) and good == PNG


def test_a_url_that_is_not_text_is_that_images_error():
    (bad,) = fetch_images([["http://a.example/x.png"]], LIMITS)
    assert isinstance(bad, ImageLoadError) and "not a URL: list" in str(bad)


def test_the_images_of_one_request_share_one_byte_budget():
    limits = Limits(max_file_bytes=50_000, max_request_image_bytes=len(PNG) * 2)
    first, second, third = fetch_images([data_uri(PNG)] * 3, limits)
    assert first == second == PNG
    assert "together hold more than" in str(third) and "LYCHEE_MAX_REQUEST_IMAGE_BYTES" in str(third)


# --- looking host names up: the system resolver only, bounded in time ---------------------

@pytest.fixture
def no_dns_over_https(monkeypatch):
    """Fail the test if safehttpx's lookup (and its DNS-over-HTTPS fallback to dns.google) is used."""
    import safehttpx

    async def forbidden(*args, **kwargs):
        raise AssertionError("safehttpx's resolver (DNS over HTTPS at dns.google) was used")

    monkeypatch.setattr(safehttpx, "async_validate_url", forbidden)
    monkeypatch.setattr(safehttpx, "async_resolve_hostname_google", forbidden)


def test_a_host_that_resolves_to_loopback_is_refused_naming_the_address(no_dns_over_https):
    (outcome,) = fetch_images(["http://localhost:9/x.png"], LIMITS)
    assert isinstance(outcome, ImageLoadError)
    assert "localhost resolves to" in str(outcome) and "not a public address" in str(outcome)


def test_a_host_that_does_not_resolve_is_that_images_error(no_dns_over_https):
    started = time.monotonic()
    bad, good = fetch_images(["http://no-such-host.invalid/x.png", data_uri(PNG)], LIMITS)
    assert "no-such-host.invalid does not resolve" in str(bad) and good == PNG
    assert time.monotonic() - started < 5


def test_a_lookup_that_never_answers_costs_that_image_and_never_hangs_later_requests(monkeypatch):
    asked = []

    def silent_resolver(host: str) -> list[str]:
        asked.append(host)
        time.sleep(6)
        return ["8.8.8.8"]

    monkeypatch.setattr(url_images, "resolve_host", silent_resolver)
    for _ in range(2):  # the second request for the same host must not wait on the first
        started = time.monotonic()
        bad, good = fetch_images(["http://silent.example/x.png", data_uri(PNG)], LIMITS)
        assert "longer than 2 s (LYCHEE_URL_TIMEOUT_S)" in str(bad) and good == PNG
        assert time.monotonic() - started < 5  # the lookup itself takes 6 s
    assert asked == ["silent.example", "silent.example"]


def test_the_urls_of_one_request_share_one_deadline_and_are_fetched_together(server, public_test_host):
    started = time.monotonic()
    outcomes = fetch_images([f"http://{PUBLIC_HOST}:{server}/slow"] * 24 + [data_uri(PNG)], LIMITS)
    assert time.monotonic() - started < 6  # one 2 s deadline for all; 2 s each, 4 at a time, would be 12 s
    assert all("longer than 2 s (LYCHEE_URL_TIMEOUT_S)" in str(o) for o in outcomes[:-1]) and outcomes[-1] == PNG
