"""Documents that carry text: image, text and image+text candidates through the protocol, the
cleaning of their texts, and the transformers backend on the tiny random checkpoint.

Random weights make the scores meaningless: these tests check the prompt, equality between
code paths (batched, one by one, the plain processor call, cached), and the errors."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from lychee import LycheeReranker, protocol
from lychee.backends.transformers import Engine
from lychee.documents import DocumentsFileError, prepare_texts, read_documents, text_label
from lychee.limits import Limits
from lychee.messages import InputWarning, UserError

from .conftest import make_image

QUERY = "red running shoes"
TOLERANCE = 1e-4       # 0-10 scale, fp32
BF16_TOLERANCE = 0.05  # 0-10 scale, bf16
IMAGE_PART = "<|vision_start|><|image_pad|><|vision_end|>"
TEXTS = ["Trail running shoe, red mesh", "", "Red sneaker with white sole, size 42",
         "A blue leather handbag", "Running shoes", "红色跑鞋,轻便透气"]


def images() -> list[Image.Image]:
    sizes = [(64, 48), (40, 80), (96, 96), (120, 60), (56, 56), (80, 120)]
    return [Image.open(io.BytesIO(make_image(w, h, (40 * i, 90, 200 - 30 * i)))).convert("RGB")
            for i, (w, h) in enumerate(sizes)]


def mixed() -> tuple[list[Image.Image | None], list[str]]:
    """Image+text, image alone, text alone, in one list; text documents of different lengths."""
    pictures = images()
    return [pictures[0], pictures[1], None, None, pictures[4], pictures[5]], TEXTS


@pytest.mark.parametrize(("image", "text", "document"), [
    (True, "", IMAGE_PART),
    (True, "Red sneaker", IMAGE_PART + "Red sneaker"),
    (False, "Red sneaker", "Red sneaker"),
])
def test_the_document_comes_after_document_image_first_then_text(tiny_reranker, image, text, document):
    engine = tiny_reranker.backend.engine
    messages = protocol.with_document(protocol.rerank_messages(QUERY), image=image, text=text)
    prompt = engine.render(messages)
    assert f"<Query>:{QUERY}\n<Document>:{document}<|im_end|>" in prompt
    assert prompt.count(IMAGE_PART) == int(image)


def test_a_document_needs_an_image_or_a_text():
    with pytest.raises(ValueError, match="needs an image, a text or both"):
        protocol.with_document(protocol.rerank_messages(QUERY), image=False, text="")


def test_texts_are_cleaned_like_the_query_with_one_notice_per_kind():
    limits = Limits(max_document_chars=10)
    prepared = prepare_texts(["ok <|im_end|>", None, "x" * 25, "<|image_pad|>fine", "short"], limits)
    assert prepared.texts == ("ok", "", "x" * 10, "fine", "short")
    notices = {n.key: n for n in prepared.notices}
    assert set(notices) == {"document_control_tokens", "document_truncated"}
    assert notices["document_control_tokens"].text("en") == (
        "removed chat-template control tokens from the text of the document(s) at index 0, 3 "
        "(<|im_end|> <|image_pad|>)")
    assert "document(s) at index 2 is longer than 10 characters" in notices["document_truncated"].text("en")
    assert "索引为 2 的文档" in notices["document_truncated"].text("zh")
    assert prepare_texts(prepared.texts, limits) == prepare_texts(prepared.texts, limits)  # idempotent
    assert prepare_texts(prepared.texts, limits).notices == ()


def test_a_text_that_is_not_text_refuses_the_request():
    with pytest.raises(UserError, match="document 2 text must be text, got 5"):
        prepare_texts(["fine", 5], Limits())


def test_a_text_only_document_is_named_by_its_text():
    assert text_label("Red  sneaker\n42") == "“Red sneaker 42”"
    assert text_label("x" * 60) == "“" + "x" * 40 + "…”"


def test_image_text_and_text_documents_score_and_the_text_counts(tiny_reranker):
    pictures, texts = mixed()
    records = tiny_reranker.score(QUERY, pictures, texts=texts)
    assert [r.error for r in records] == [None] * 6
    assert [r.source for r in records[:4]] == ["image 1", "image 2", f"“{TEXTS[2]}”", f"“{TEXTS[3]}”"]
    alone = tiny_reranker.score(QUERY, [pictures[0]])[0].raw_score
    assert abs(records[0].raw_score - alone) > 1e-3  # the title reaches the prompt
    assert records[1].raw_score == pytest.approx(tiny_reranker.score(QUERY, [pictures[1]])[0].raw_score, abs=TOLERANCE)
    assert len({round(r.raw_score, 6) for r in records}) == 6


def test_texts_alone_need_no_images(tiny_reranker):
    records = tiny_reranker.rerank(QUERY, texts=TEXTS[2:4])
    assert sorted(r.index for r in records) == [0, 1] and all(r.error is None for r in records)


def test_document_scores_equal_the_plain_processor_call(tiny_checkpoint):
    """The model's own path for each kind: the processor given the rendered prompt, every logit computed."""
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", batch_size=3)
    engine = reranker.backend.engine
    pictures, texts = mixed()
    ours = [r.raw_score for r in reranker.score(QUERY, pictures, texts=texts)]
    for score, image, text in zip(ours, pictures, texts):
        prompt = engine.render(protocol.with_document(protocol.rerank_messages(QUERY), image=image is not None,
                                                      text=text))
        inputs = engine.processor(text=[prompt], images=[image] if image is not None else None, return_tensors="pt",
                                  size=engine._size())
        with torch.inference_mode():
            logits = engine.model(**inputs).logits[0, -1]
        assert abs(score - 10 * float(torch.softmax(logits[[engine.yes_id, engine.no_id]], dim=0)[0])) <= TOLERANCE


@pytest.mark.parametrize(("dtype", "tolerance"), [("fp32", TOLERANCE), ("bf16", BF16_TOLERANCE)])
@pytest.mark.parametrize("kind", ["text", "image+text", "mixed"])
def test_batched_document_scores_equal_one_by_one(tiny_checkpoint, dtype, tolerance, kind):
    pictures, texts = mixed()
    if kind == "text":
        pictures = [None] * len(texts)
    elif kind == "image+text":
        pictures = images()
    texts = [t or "plain" for t in texts] if kind != "mixed" else texts
    batched = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype=dtype, batch_size=4)
    single = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype=dtype, batch_size=1)
    a = batched.score(QUERY, pictures, texts=texts)
    b = single.score(QUERY, pictures, texts=texts)
    assert all(r.error is None for r in a + b)
    assert max(abs(x.raw_score - y.raw_score) for x, y in zip(a, b)) <= tolerance


def test_text_only_documents_cost_no_vision_tower_time(tiny_checkpoint, monkeypatch):
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", batch_size=2, vision_cache_bytes=0)
    encoded: list[int] = []
    encode = Engine._encode
    monkeypatch.setattr(Engine, "_encode", lambda self, batch: encoded.append(len(batch)) or encode(self, batch))
    tower_calls: list[int] = []
    reranker.backend.engine.model.model.visual.register_forward_hook(lambda *_: tower_calls.append(1))
    reranker.score(QUERY, texts=TEXTS[2:])
    assert encoded == [] and tower_calls == []
    pictures, texts = mixed()
    reranker.score(QUERY, pictures, texts=texts)
    assert sum(encoded) == 4  # only the documents with an image


def test_the_vision_cache_serves_image_text_documents(tiny_checkpoint):
    cached = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", vision_cache_bytes=64 * 2**20)
    uncached = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", vision_cache_bytes=0)
    pictures, texts = mixed()
    for query in (QUERY, "a handbag"):  # the second query reads every image from the cache
        with_cache = cached.score(query, pictures, texts=texts)
        without = uncached.score(query, pictures, texts=texts)
        assert max(abs(x.raw_score - y.raw_score) for x, y in zip(with_cache, without)) <= TOLERANCE
    assert cached.backend.engine.vision_cache.hits == 4


def test_a_bad_document_fails_alone(tiny_reranker, image_dir):
    pictures, texts = mixed()
    broken = str(image_dir / "corrupt.jpg")
    records = tiny_reranker.score(QUERY, [broken, None, *pictures[:2]], texts=["A title", None, *texts[:2]])
    assert records[0].error == "not a readable image (truncated JPEG)"
    assert records[1].error == "no image and no text" and records[1].failure.text("zh") == "既没有图片也没有文字"
    assert records[2].error is None and records[3].error is None
    ranked = tiny_reranker.rerank(QUERY, [broken, None, *pictures[:2]], texts=["A title", None, *texts[:2]])
    assert [r.index for r in ranked[-2:]] == [0, 1] and ranked[-1].score == 0.0


def test_control_tokens_in_texts_warn_and_never_reach_the_prompt(tiny_reranker):
    with pytest.warns(InputWarning, match=r"document\(s\) at index 0 \(<\|image_pad\|>\)"):
        record = tiny_reranker.score(QUERY, texts=["Red <|image_pad|> sneaker"])[0]
    assert record.error is None
    assert record.raw_score == pytest.approx(tiny_reranker.score(QUERY, texts=["Red   sneaker"])[0].raw_score,
                                             abs=TOLERANCE)


def test_texts_and_images_must_pair_up(tiny_reranker):
    with pytest.raises(ValueError, match="got 1 texts for 2 images"):
        tiny_reranker.score(QUERY, images()[:2], texts=["one"])
    with pytest.raises(ValueError, match="give images, texts or both"):
        tiny_reranker.score(QUERY)


def test_generate_mode_refuses_documents_with_text(tiny_checkpoint):
    reranker = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32", mode="generate")
    with pytest.raises(ValueError, match="documents with text need mode='logit'"):
        reranker.score(QUERY, images()[:1], texts=["a title"])


def test_a_documents_file_gives_images_relative_to_it_and_texts(tmp_path):
    (tmp_path / "shoe.png").write_bytes(make_image(32, 32, (200, 0, 0)))
    path = tmp_path / "docs.jsonl"
    path.write_text('{"image": "shoe.png", "text": "Red shoe"}\n\n{"text": "Blue bag"}\n{"image": "shoe.png"}\n',
                    encoding="utf-8")
    assert read_documents(path) == ([str(tmp_path / "shoe.png"), None, str(tmp_path / "shoe.png")],
                                    ["Red shoe", "Blue bag", None])


@pytest.mark.parametrize(("line", "problem"), [
    ("not json", "docs.jsonl line 2: not JSON"),
    ('["a"]', 'docs.jsonl line 2: expected an object with "image" and/or "text"'),
    ('{"txt": "typo"}', 'docs.jsonl line 2: expected an object with "image" and/or "text"'),
    ('{"text": 3}', 'docs.jsonl line 2: "text" must be a string'),
])
def test_a_bad_line_in_a_documents_file_is_named(tmp_path, line, problem):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DocumentsFileError, match=problem.replace("[", r"\[").replace("(", r"\(")):
        read_documents(path)
