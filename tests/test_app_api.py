"""The ``/rerank`` queue API of the launched web demo, driven by a real ``gradio_client``.

The app runs on the tiny random checkpoint, so scores are meaningless: these tests check
the schema, the ranking rules and the error handling, never which image wins.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import APP_MAX_IMAGES

pytestmark = pytest.mark.timeout(120)

QUERY = "一只black cat坐在red sofa上"
RECORD_KEYS = {"rank", "index", "source", "score", "raw_score", "tied", "raw_output", "error"}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client(demo_url):
    from gradio_client import Client

    return Client(demo_url, verbose=False)


@pytest.fixture(scope="module")
def batch(image_dir) -> list[str]:
    """Five good images and one corrupt JPEG (the last)."""
    return [*(str(image_dir / f"good{i}.png") for i in range(5)), str(image_dir / "corrupt.jpg")]


API_ARGUMENTS = {"query": QUERY, "images": None, "preset": "", "score_threshold": None, "top_k": None,
                 "instruction": "", "normalize": False, "tie_epsilon": 0.05, "max_side": 1920, "query_image": None}


def call(client, images: list[str], **kwargs) -> dict:
    """``/rerank`` takes all ten arguments by position (it is undocumented, so the client
    does not know their names)."""
    from gradio_client import handle_file

    arguments = API_ARGUMENTS | {"images": [handle_file(p) for p in images]} | kwargs
    return client.predict(*arguments.values(), api_name="/rerank")


@pytest.fixture(scope="module")
def everything(client, batch) -> dict:
    """One call that keeps every image (no threshold, no top_k)."""
    return call(client, batch)


def test_rerank_urls_is_the_only_documented_endpoint(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/rerank_urls", "/calibrate", "/explain_url"}
    assert not api["unnamed_endpoints"]
    names = [p["parameter_name"] for p in api["named_endpoints"]["/rerank_urls"]["parameters"]]
    assert names == ["query", "image_urls", *list(API_ARGUMENTS)[2:-1], "query_image_url", "texts"]


def test_result_follows_the_documented_schema(everything):
    assert everything["schema_version"] == 4
    assert everything["query"] == QUERY
    assert set(everything["settings"]) == {"score_threshold", "top_k", "instruction", "normalize", "tie_epsilon",
                                           "max_side"}
    assert everything["model"]["device"] == "cpu" and everything["model"]["dtype"] == "fp32"
    assert everything["counts"] == {"images": 6, "results": 5, "filtered_out": 0, "errors": 1, "skipped": 0,
                                   "scored": 5, "from_store": 0}
    assert everything["winner_strength"] in ("close", "clear", "dominant")
    assert everything["elapsed_s"] > 0 and everything["images_per_s"] > 0
    assert everything["warnings"] == []
    for record in everything["results"] + everything["errors"]:
        assert set(record) == RECORD_KEYS
        assert isinstance(record["score"], float) and isinstance(record["tied"], bool)


def test_sources_are_the_uploaded_file_names(everything):
    names = {r["source"] for r in everything["results"] + everything["errors"]}
    assert names == {"good0.png", "good1.png", "good2.png", "good3.png", "good4.png", "corrupt.jpg"}


def test_results_are_best_first_and_ties_keep_input_order(everything):
    results = everything["results"]
    assert [r["rank"] for r in results] == list(range(1, len(results) + 1))
    for upper, lower in zip(results, results[1:]):
        if upper["score"] < lower["score"]:  # only inside a tie group, where input order decides
            assert upper["tied"] and lower["tied"] and upper["index"] < lower["index"]


def test_corrupt_image_is_an_error_record_and_the_rest_are_ranked(everything):
    (error,) = everything["errors"]
    assert error["source"] == "corrupt.jpg" and error["score"] == 0.0
    assert error["error"].startswith("not a readable image") and error["index"] == 5
    assert error["rank"] == 6
    assert all(r["error"] is None for r in everything["results"])


def test_threshold_and_top_k_select_the_best_passing_images(client, batch, everything):
    scores = sorted((r["score"] for r in everything["results"]), reverse=True)
    threshold = scores[3]  # four images pass
    data = call(client, batch, score_threshold=threshold, top_k=2)
    assert data["settings"]["score_threshold"] == threshold and data["settings"]["top_k"] == 2
    assert len(data["results"]) == 2
    assert all(r["score"] >= threshold for r in data["results"])
    reasons = sorted(r["reason"] for r in data["filtered_out"])
    assert reasons == ["below_threshold", "beyond_top_k", "beyond_top_k"]
    assert [r["rank"] for r in data["results"] + data["filtered_out"] + data["errors"]] == list(range(1, 7))


def test_a_preset_supplies_threshold_and_top_k(client, batch):
    data = call(client, batch, preset="precise")
    assert data["preset"] == "precise"
    assert data["settings"]["score_threshold"] == 8.0 and data["settings"]["top_k"] == 1
    assert len(data["results"]) <= 1


def test_too_many_images_is_a_clear_error(client, image_dir):
    from gradio_client.exceptions import AppError

    images = [str(image_dir / f"good{i % 6}.png") for i in range(APP_MAX_IMAGES + 1)]
    with pytest.raises(AppError, match=f"at most {APP_MAX_IMAGES} images per request \\(LYCHEE_MAX_IMAGES\\)"):
        call(client, images)


def test_empty_query_is_a_clear_error(client, batch):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="the query is empty"):
        call(client, batch, query="   ")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"preset": "fastest"}, "unknown preset 'fastest'"),
    ({"score_threshold": 11}, "score_threshold must be a number from 0 to 10"),
    ({"top_k": -1}, "top_k must be a whole number >= 1"),
    ({"top_k": 2.5}, "top_k must be a whole number >= 1 .* got 2.5"),
    ({"top_k": 0.4}, "top_k must be a whole number >= 1 .* got 0.4"),
    ({"top_k": -0.4}, "top_k must be a whole number >= 1 .* got -0.4"),
    ({"top_k": "three"}, "top_k must be a whole number >= 1 .* got 'three'"),
    ({"max_side": 100.5}, "max_side .* must be a whole number from 64 to 4096, got 100.5"),
    ({"normalize": "yes"}, "normalize must be true or false, got 'yes'"),
    ({"tie_epsilon": "wide"}, "tie_epsilon must be a number from 0 to 10, got 'wide'"),
    ({"instruction": 5}, "instruction must be text, got 5"),
])
def test_bad_settings_are_refused_with_the_libraries_bilingual_errors(client, batch, kwargs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message) as refused:
        call(client, batch, **kwargs)
    english, chinese = str(refused.value).split(" / ", 1)
    assert "object at 0x" not in str(refused.value) and any("\u4e00" <= ch <= "\u9fff" for ch in chinese)


def test_whole_numbers_sent_as_floats_are_accepted(client, batch):
    data = call(client, batch, top_k=2.0, max_side=512.0)
    assert data["settings"]["top_k"] == 2 and data["settings"]["max_side"] == 512
    assert len(data["results"]) == 2


def test_a_refused_request_is_logged_as_one_line_without_a_traceback(client, batch, capsys, caplog):
    from gradio_client.exceptions import AppError

    caplog.set_level("INFO", logger="lychee")
    with pytest.raises(AppError):
        call(client, batch, top_k=2.5)
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused request:")]
    assert len(refusals) == 1 and refusals[0].exc_info is None
    assert "Traceback" not in capsys.readouterr().err


def test_truncated_and_cleaned_text_comes_back_as_warnings(client, batch):
    data = call(client, batch, query="a cat<|im_end|>" + "x" * 2000, instruction="<|image_pad|>" + "y" * 600)
    codes = [w["code"] for w in data["warnings"]]
    assert codes == ["query_control_tokens", "query_truncated", "instruction_control_tokens",
                     "instruction_truncated"]
    assert all(" / " in w["message"] for w in data["warnings"])
    assert len(data["query"]) == 1000 and len(data["settings"]["instruction"]) == 500
    assert data["counts"]["errors"] == 1  # only the corrupt image: the control tokens broke nothing


def test_example_client_script_prints_the_ranked_table(demo_url, batch):
    script = ROOT / "examples" / "api_client.py"
    done = subprocess.run([sys.executable, str(script), "--url", demo_url, "--top-k", "3", QUERY, *batch],
                          capture_output=True, text=True, timeout=60, check=True)
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "image"]
    assert lines[1].startswith("#1 ")
    assert "corrupt.jpg" in done.stdout and "not a readable image" in done.stdout


def test_rerank_urls_ranks_data_uris_like_uploads(client, batch):
    from .test_url_images import data_uri

    paths = batch[:3]
    uploads = call(client, paths)
    by_url = client.predict("一只black cat坐在red sofa上", [data_uri(Path(p).read_bytes()) for p in paths],
                            api_name="/rerank_urls")
    assert by_url["schema_version"] == 4
    assert [r["index"] for r in by_url["results"]] == [r["index"] for r in uploads["results"]]
    assert [r["score"] for r in by_url["results"]] == [r["score"] for r in uploads["results"]]


def test_rerank_urls_refuses_a_list_that_is_not_urls(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="image_urls must be a list of URL strings"):
        client.predict("a cat", "http://example.com/x.png", api_name="/rerank_urls")


REFERENCE = ROOT / "examples" / "images" / "coffee.jpg"


@pytest.mark.parametrize(("query", "kind"), [("", "image"), ("at night", "image+text")])
def test_rerank_takes_a_query_image(client, batch, query, kind):
    from gradio_client import handle_file

    data = call(client, batch, query=query, query_image=handle_file(str(REFERENCE)))
    assert (data["schema_version"], data["query_kind"], data["query_image"]) == (4, kind, "coffee.jpg")
    assert data["counts"] == {"images": 6, "results": 5, "filtered_out": 0, "errors": 1, "skipped": 0,
                              "scored": 5, "from_store": 0}
    assert data["settings"]["instruction"] is None  # the default for the query's kind is the protocol's


def test_an_unreadable_query_image_is_refused_in_both_languages(client, batch, image_dir):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="the query image cannot be used: not a readable image") as refused:
        call(client, batch, query="", query_image=handle_file(str(image_dir / "corrupt.jpg")))
    assert "参考图片无法使用" in str(refused.value)


def test_rerank_urls_takes_a_query_image_url_and_refuses_an_internal_one(client, batch):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from .test_url_images import data_uri

    images = [data_uri(Path(p).read_bytes()) for p in batch[:3]]
    data = client.predict("", images, query_image_url=data_uri(REFERENCE.read_bytes()), api_name="/rerank_urls")
    assert (data["query_kind"], data["query_image"], data["counts"]["results"]) == ("image", "image 1", 3)
    uploads = call(client, batch[:3], query="", query_image=handle_file(str(REFERENCE)))
    assert [r["score"] for r in data["results"]] == [r["score"] for r in uploads["results"]]
    with pytest.raises(AppError, match="query image cannot be used: refused URL: 127.0.0.1 is not a public"):
        client.predict("", images, query_image_url="http://127.0.0.1/ref.png", api_name="/rerank_urls")


MALFORMED_URLS = ["http://xn--localhost-/a.png", "http://images.example:99999/b.png"]


def test_rerank_urls_makes_each_malformed_url_its_own_error(client, batch):
    from .test_url_images import data_uri

    good = data_uri(Path(batch[0]).read_bytes())
    data = client.predict("a cat", [*MALFORMED_URLS, good], api_name="/rerank_urls")
    assert data["counts"]["results"] == 1 and data["counts"]["errors"] == 2
    errors = [e["error"] for e in sorted(data["errors"], key=lambda e: e["index"])]
    assert "A-label must not end with a hyphen" in errors[0] and "port 99999 is not a valid port" in errors[1]
    assert not any("TaskGroup" in e for e in errors)


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_a_malformed_query_image_url_is_refused_in_both_languages(client, batch, url):
    from gradio_client.exceptions import AppError

    from .test_url_images import data_uri

    with pytest.raises(AppError, match="the query image cannot be used: refused URL") as refused:
        client.predict("", [data_uri(Path(batch[0]).read_bytes())], query_image_url=url, api_name="/rerank_urls")
    assert "参考图片无法使用" in str(refused.value) and "TaskGroup" not in str(refused.value)


def test_a_query_image_url_that_is_not_text_is_a_bilingual_validation_error(client, batch):
    from gradio_client.exceptions import AppError

    from .test_url_images import data_uri

    with pytest.raises(AppError, match="query_image_url must be text, got \\['http") as refused:
        client.predict("", [data_uri(Path(batch[0]).read_bytes())], query_image_url=["http://a.example/x.png"],
                       api_name="/rerank_urls")
    assert "必须是文本" in str(refused.value) and "attribute" not in str(refused.value)


def test_rerank_urls_takes_a_text_per_document_and_text_only_documents(client, batch, tiny_checkpoint):
    from lychee import LycheeReranker

    from .test_url_images import data_uri

    urls = [data_uri(Path(p).read_bytes()) for p in batch[:2]] + ["", data_uri(Path(batch[2]).read_bytes())]
    texts = ["Black cat on a red sofa", "", "A cat <|im_end|> asleep", ""]
    data = client.predict(QUERY, urls, texts=texts, api_name="/rerank_urls")
    assert data["counts"] == {"images": 4, "results": 4, "filtered_out": 0, "errors": 0, "skipped": 0,
                              "scored": 4, "from_store": 0}
    by_index = {r["index"]: r for r in data["results"]}
    assert [by_index[i]["source"] for i in range(4)] == ["image 1", "image 2", "“A cat asleep”", "image 4"]
    assert [w["code"] for w in data["warnings"]] == ["document_control_tokens"]
    library = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32")
    expected = library.score(QUERY, [Path(batch[0]).read_bytes(), Path(batch[1]).read_bytes(), None,
                                     Path(batch[2]).read_bytes()], texts=texts)
    assert [by_index[i]["raw_score"] for i in range(4)] == pytest.approx([r.raw_score for r in expected], abs=1e-5)


@pytest.mark.parametrize(("texts", "message"), [
    (["one"], "got 1 texts for 2 documents"),
    ([1, 2], "texts must be a list of strings"),
])
def test_rerank_urls_refuses_texts_that_do_not_fit(client, batch, texts, message):
    from gradio_client.exceptions import AppError

    from .test_url_images import data_uri

    urls = [data_uri(Path(p).read_bytes()) for p in batch[:2]]
    with pytest.raises(AppError, match=message):
        client.predict(QUERY, urls, texts=texts, api_name="/rerank_urls")
