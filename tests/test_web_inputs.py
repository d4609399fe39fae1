"""The page's inputs reach lychee's own checks: the hints event never reads more than the
query limit, a reference image is judged by lychee's loader (not Gradio's Pillow call), and
odd numbers from the page are validation errors."""

from __future__ import annotations

import math

import pytest

from lychee.limits import Limits
from lychee.messages import UserError

from .conftest import make_image


def test_the_hints_event_reads_no_more_than_the_query_limit(monkeypatch):
    from lychee.web import view

    seen = []
    real = view.query_hints
    monkeypatch.setattr(view, "query_hints", lambda text: seen.append(len(text)) or real(text))
    advice = view.hints_markdown("好看" + "x" * 10_000_000, "zh", 1000)
    assert seen == [1000] and "好看" in advice


def test_hints_of_something_that_is_not_text_are_empty():
    from lychee.web.view import hints_markdown

    assert hints_markdown(None, "en", 1000) == ""


def test_a_text_file_named_jpg_as_reference_gets_the_bilingual_message_without_a_path(tmp_path):
    from gradio.data_classes import FileData

    from lychee.web.components import ReferenceImage
    from lychee.web.service import Form, accept

    fake = tmp_path / "photo.jpg"
    fake.write_text("this is plain text, not an image\n")
    path = ReferenceImage(type="filepath").preprocess(FileData(path=str(fake), orig_name="photo.jpg"))
    assert path == str(fake)  # not opened by Gradio: no UnidentifiedImageError with its temp path
    good = tmp_path / "good.png"
    good.write_bytes(make_image(20, 20, (1, 2, 3)))
    with pytest.raises(UserError) as refused:
        accept(Form("", query_image=path), [str(good)], Limits())
    assert refused.value.key == "bad_query_image"
    assert "参考图片无法使用" in refused.value.bilingual() and str(tmp_path) not in refused.value.bilingual()


def test_the_reference_input_is_drawn_as_gradios_image():
    from lychee.web.components import ReferenceImage

    assert ReferenceImage(type="filepath").get_block_name() == "image"


@pytest.mark.parametrize(("field", "key"), [("top_k", "bad_top_k"), ("max_side", "bad_max_side"),
                                            ("score_threshold", "bad_threshold"), ("tie_epsilon", "bad_tie_epsilon")])
@pytest.mark.parametrize("value", [math.nan, math.inf, 10**400])
def test_odd_numbers_from_the_page_are_validation_errors(field, key, value):
    from lychee.web.service import Form, form_settings

    with pytest.raises(UserError) as refused:
        form_settings(Form("a cat", **{field: value}))
    assert refused.value.key == key and "0x" not in refused.value.bilingual()
