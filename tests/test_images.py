"""Image loading: inputs, EXIF, modes, animation, shapes, limits and every way a file can be bad."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from lychee import images
from lychee.images import MAX_ASPECT_RATIO, ImageLoadError, is_image_path, load_image
from lychee.limits import Limits

from .conftest import make_image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def animation(fmt: str) -> bytes:
    """Two frames: red, then blue."""
    frames = [Image.new("RGB", (32, 24), (255, 0, 0)), Image.new("RGB", (32, 24), (0, 0, 255))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG that claims ``width`` x ``height`` but holds almost no data (a bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_paths_pathlib_bytes_bytearray_and_pil_images_load_alike(tmp_path):
    data = make_image(40, 30, (10, 120, 240))
    (tmp_path / "x.png").write_bytes(data)
    loaded = [load_image(s) for s in (str(tmp_path / "x.png"), tmp_path / "x.png", data, bytearray(data),
                                      Image.open(io.BytesIO(data)))]
    assert {(im.mode, im.size, im.tobytes()) for im in loaded} == {("RGB", (40, 30), loaded[0].tobytes())}


def test_the_longest_side_is_bounded_and_the_aspect_kept():
    image = load_image(make_image(400, 100, (1, 2, 3)), max_side=200)
    assert image.size == (200, 50)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.new("RGB", (60, 20), (200, 0, 0)), "JPEG", exif=exif.tobytes())
    assert load_image(data).size == (20, 60)


def test_an_unreadable_exif_block_is_ignored_not_fatal(monkeypatch):
    def broken(image):
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    assert load_image(make_image(30, 20, (5, 5, 5), "JPEG")).size == (30, 20)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_images_give_their_first_frame(fmt):
    image = load_image(animation(fmt))
    red, _, blue = image.getpixel((16, 12))
    assert image.mode == "RGB" and red > 200 and blue < 50


@pytest.mark.parametrize(("mode", "fmt"), [
    ("1", "PNG"), ("L", "JPEG"), ("P", "GIF"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("YCbCr", "JPEG"),
    ("LAB", "TIFF"), ("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF"), ("F", "TIFF"), ("LA", "PNG"),
    ("RGBA", "PNG"), ("RGBA", "WEBP"), ("PA", "TIFF"), ("RGBX", "TIFF"),
])
def test_every_mode_becomes_rgb(mode, fmt):
    image = load_image(encode(Image.new(mode, (24, 16)), fmt))
    assert image.mode == "RGB" and image.size == (24, 16)


@pytest.mark.parametrize("mode", ["La", "RGBa", "HSV", "I;16L", "I;16N"])
def test_pil_only_modes_become_rgb(mode):
    assert load_image(Image.new(mode, (24, 16))).mode == "RGB"


def test_16_bit_greyscale_is_scaled_into_8_bits_not_clipped():
    image = Image.new("I;16", (2, 1))
    image.putpixel((0, 0), 1000)
    image.putpixel((1, 0), 500)
    loaded = load_image(encode(image, "PNG"))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert 120 <= loaded.getpixel((1, 0))[0] <= 135


def test_alpha_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    loaded = load_image(encode(image, "PNG"))
    assert loaded.getpixel((3, 3)) == (255, 255, 255) and loaded.getpixel((0, 0)) == (255, 0, 0)


def test_palette_transparency_is_composited_on_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    loaded = load_image(encode(image, "PNG", transparency=0))
    assert loaded.getpixel((3, 3)) == (255, 255, 255) and loaded.getpixel((0, 0)) == (255, 0, 0)


def test_a_1x1_image_loads():
    assert load_image(make_image(1, 1, (9, 9, 9))).size == (1, 1)


@pytest.mark.parametrize("size", [(1, 1000), (4000, 3), (1920, 1)])
def test_extreme_aspect_ratios_are_padded_to_what_the_model_accepts(size):
    image = load_image(Image.new("RGB", size, (0, 0, 0)), max_side=4000)
    assert max(image.size) / min(image.size) <= MAX_ASPECT_RATIO
    assert max(image.size) == max(size)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, at 89 MP
def test_a_decompression_bomb_is_refused_from_its_header():
    with pytest.raises(ImageLoadError, match=r"10001x10000 = 100 MP, above the limit of 100 MP "
                                             r"\(LYCHEE_MAX_IMAGE_PIXELS\)"):
        load_image(png_header_only(10001, 10000))


def test_a_bomb_past_pillows_own_guard_gets_the_same_kind_of_message():
    with pytest.raises(ImageLoadError, match=r"far above the limit of 100 MP \(LYCHEE_MAX_IMAGE_PIXELS\)"):
        load_image(png_header_only(30000, 30000))


def test_the_pixel_limit_is_configurable():
    with pytest.raises(ImageLoadError, match=r"40x30 = 0 MP, above the limit"):
        load_image(make_image(40, 30, (1, 1, 1)), limits=Limits(max_image_pixels=1000))


def test_a_file_above_the_size_limit_is_refused_with_the_limit_named(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(make_image(64, 64, (1, 2, 3)))
    size = path.stat().st_size
    for source in (path, path.read_bytes()):
        with pytest.raises(ImageLoadError, match=rf"file is {size:,} bytes, above the limit of 100 bytes "
                                                 r"\(LYCHEE_MAX_FILE_BYTES\)"):
            load_image(source, limits=Limits(max_file_bytes=100))


def test_a_file_above_the_size_limit_is_not_read(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(make_image(64, 64, (1, 2, 3)))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the file was read"))
    with pytest.raises(ImageLoadError, match="LYCHEE_MAX_FILE_BYTES"):
        load_image(path, limits=Limits(max_file_bytes=100))


@pytest.mark.parametrize(("fmt", "expected"), [("JPEG", "truncated JPEG"), ("PNG", "truncated PNG")])
def test_truncated_files_say_so(fmt, expected):
    data = make_image(200, 150, (90, 60, 30), fmt)
    with pytest.raises(ImageLoadError, match=f"not a readable image \\({expected}\\)"):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize(("source", "message"), [
    (b"", "empty file (0 bytes)"),
    (b"plain text, not a picture\n", "not a readable image (unknown format, or not an image)"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not a readable image (damaged PNG header)"),
    (b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 40, "not a readable image (damaged WEBP header)"),
    (42, "unsupported input type int; give a file path, bytes or a PIL image"),
    (None, "unsupported input type NoneType"),
])
def test_bad_sources_raise_image_load_error(source, message):
    with pytest.raises(ImageLoadError) as caught:
        load_image(source)
    assert message in str(caught.value)


def test_missing_files_and_folders_are_named(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="not a file"):
        load_image(tmp_path)


def test_a_file_that_cannot_be_read_says_why(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    path.write_bytes(make_image(8, 8, (1, 1, 1)))

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ImageLoadError, match=r"cannot read the file \(Permission denied\)"):
        load_image(path)


def test_decoder_errors_of_any_type_become_image_load_errors(monkeypatch):
    monkeypatch.setattr(images, "_decode", lambda image, max_side, budget: [][1])
    with pytest.raises(ImageLoadError, match=r"not a readable image \(PNG: list index out of range\)"):
        load_image(make_image(8, 8, (1, 1, 1)))


@pytest.mark.parametrize(("name", "expected"), [
    ("a.jpg", True), ("B.JPEG", True), ("c.webp", True), ("d.gif", True), ("e.tif", True), ("f.png", True),
    ("notes.txt", False), ("archive.zip", False), ("noextension", False), ("photo.jpg.txt", False),
])
def test_image_extensions(name, expected):
    assert is_image_path(name) is expected


def test_a_pil_image_given_is_left_as_it_was():
    image = Image.new("RGB", (400, 100), (10, 200, 30))
    assert load_image(image, max_side=200).size == (200, 50)
    assert image.size == (400, 100)


@pytest.mark.parametrize(("mode", "size", "shown"), [("F", (1000, 1000), "4.0 MB"), ("I;16", (2000, 1000), "4.0 MB"),
                                                     ("RGB", (1000, 1000), "4.0 MB")])
def test_an_image_too_big_in_memory_decoded_is_refused_before_decoding(mode, size, shown):
    data = (encode(Image.new(mode, size), "TIFF", compression="tiff_deflate") if mode == "F"
            else encode(Image.new(mode, size), "PNG"))
    assert len(data) < 100_000  # small on disk
    with pytest.raises(ImageLoadError, match=f"would take {shown} in memory decoded .*LYCHEE_MAX_DECODED_BYTES"):
        load_image(data, limits=Limits(max_decoded_bytes=3_000_000))


def test_16_bit_and_float_images_convert_a_block_of_rows_at_a_time(monkeypatch):
    import numpy as np

    gradient = np.tile(np.linspace(0, 60000, 300, dtype=np.float32), (2000, 1))
    expected = (np.clip(gradient, 0, 60000) * (255.0 / 60000)).astype(np.uint8)
    monkeypatch.setattr(images, "_BLOCK_PIXELS", 300 * 7)  # many blocks, a short last one
    scaled = images._scaled_to_8_bit(Image.fromarray(gradient, "F"))
    assert np.array_equal(np.asarray(scaled), expected)


def test_decoding_waits_for_room_in_the_shared_budget():
    import threading

    from lychee.images import DecodingBudget

    budget, inside, most = DecodingBudget(), [], []
    lock = threading.Lock()

    def decode() -> None:
        with budget.reserve(60, capacity=100):
            with lock:
                inside.append(1)
                most.append(len(inside))
            threading.Event().wait(0.05)
            with lock:
                inside.pop()

    threads = [threading.Thread(target=decode) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(most) == 1  # 60 + 60 > 100: one at a time


def test_a_load_error_is_said_in_either_language_and_survives_pickling():
    import pickle

    from lychee.images import load_query_image
    from lychee.messages import UserError

    jpeg = make_image(200, 150, (10, 20, 30), "JPEG")
    truncated = jpeg[: len(jpeg) // 2]
    with pytest.raises(ImageLoadError) as caught:
        load_image(truncated)
    assert str(caught.value) == "not a readable image (truncated JPEG)"
    assert caught.value.message.text("zh") == "不是可读取的图片(JPEG 文件不完整)"
    again = pickle.loads(pickle.dumps(caught.value))  # a refused download crosses into the ZeroGPU worker
    assert isinstance(again, ImageLoadError) and again.message == caught.value.message
    with pytest.raises(UserError) as refused:  # the cause inside a refusal follows the refusal's language
        load_query_image(b"")
    assert refused.value.text("zh") == "参考图片无法使用:空文件(0 字节)。请换一张 JPEG、PNG 或 WebP 图片"
    assert "empty file (0 bytes)" in refused.value.bilingual()


def test_a_forked_child_starts_with_the_decoding_budget_free():
    """ZeroGPU forks its worker while other threads may be decoding: the child must not inherit bytes
    reserved by decodes that will never finish there (it would wait for room forever)."""
    import os
    import threading

    from lychee.images import DECODING

    held, release = threading.Event(), threading.Event()

    def decode_in_parent() -> None:
        with DECODING.reserve(100, 100):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=decode_in_parent)
    thread.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: a full-size reservation must get room at once
        done = threading.Event()

        def reserve() -> None:
            with DECODING.reserve(100, 100):
                done.set()

        threading.Thread(target=reserve, daemon=True).start()
        os._exit(0 if done.wait(5) else 1)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child waited for bytes reserved before the fork"
