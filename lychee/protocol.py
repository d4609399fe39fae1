"""The prompt and score protocol of lychee-rerank-mm, in one place.

Sources:
- Paper: "Supervised Fine-Tuning or Contrastive Learning? Towards Better Multimodal
  LLM Reranking" (arXiv 2510.14824): relevance s = e^{z_yes} / (e^{z_yes} + e^{z_no}),
  the logits of "yes" and "no" at the last position.
- The same authors' Qwen3-VL-Reranker (QwenLM/Qwen3-VL-Embedding,
  ``src/models/qwen3_vl_reranker.py``): system prompt and the
  ``<Instruct>`` / ``<Query>`` / ``<Document>`` user-content layout used below.
- Model card of ``vec-ai/lychee-rerank-mm``: BF16, instruction aware, English; its usage
  code loads the processor with ``min_pixels = 4*28*28`` and ``max_pixels = 1280*28*28``
  (at most 1280 visual tokens per image), the pixel budget below.

A correction to any string here is a one-line change; nothing else hard-codes them.
"""

from __future__ import annotations

from typing import Literal

DEFAULT_MODEL = "vec-ai/lychee-rerank-mm"
MODEL_ENV_VAR = "LYCHEE_MODEL"

SYSTEM_PROMPT = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct '
    'provided. Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a caption, determine if the image matches the description."  # text -> image

# A query is text, an image, or both (SPEC section 12; lychee's paper evaluates image->image and
# image+text->image on its MRB benchmark). The model card gives an instruction only for text queries;
# these two are our choice, in the same style, and like every instruction they can be overridden.
QueryKind = Literal["text", "image", "image+text"]
IMAGE_QUERY_INSTRUCTION = "Given an image, determine if the candidate image shows the same subject and scene."
IMAGE_TEXT_QUERY_INSTRUCTION = ("Given a reference image and a description, determine if the candidate image "
                                "matches the reference image as changed by the description.")
DEFAULT_INSTRUCTIONS: dict[QueryKind, str] = {"text": DEFAULT_INSTRUCTION, "image": IMAGE_QUERY_INSTRUCTION,
                                              "image+text": IMAGE_TEXT_QUERY_INSTRUCTION}
YES_TOKEN = "yes"
NO_TOKEN = "no"

# The model card's pixel budget. One visual token covers a 28 x 28 pixel patch (14 px
# patches, merged 2 x 2); images are resized to a multiple of 28 between these bounds.
PATCH_PIXELS = 28
MIN_PIXELS = 4 * PATCH_PIXELS * PATCH_PIXELS
MAX_PIXELS = 1280 * PATCH_PIXELS * PATCH_PIXELS

# vLLM (the vllm and vllm-server backends): the checkpoint's language-model head becomes a
# one-output head, softmax over the (no, yes) logits at the last position, i.e. p(yes).
VLLM_HF_OVERRIDES = {"architectures": ["Qwen2_5_VLForSequenceClassification"],
                     "classifier_from_token": [NO_TOKEN, YES_TOKEN], "method": "from_2_way_softmax"}
VLLM_MAX_IMAGES_PER_PROMPT = 2  # a query image (SPEC section 12) and the candidate

# Generate mode: generic instruction-tuned VLMs are asked for a 0-10 score as text.
GENERATE_SYSTEM_PROMPT = (
    "You rate how well an image matches a description. "
    "Answer only with 'Score: X', where X is a number from 0 to 10."
)
GENERATE_MAX_NEW_TOKENS = 16

# Fallback used only when a checkpoint ships no chat template: chat_template.json of
# Qwen/Qwen2-VL-7B-Instruct (also used by Qwen2.5-VL), verbatim.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _system(text: str) -> dict:
    return {"role": "system", "content": [{"type": "text", "text": text}]}


def query_kind(text: str | None, has_image: bool) -> QueryKind:
    """``text``, ``image`` or ``image+text``; a query needs at least one of the two."""
    if not has_image and not text:
        raise ValueError("a query needs text, an image or both")
    return "text" if not has_image else "image+text" if text else "image"


def rerank_messages(query: str | None, instruction: str | None = None, *, query_image: bool = False) -> list[dict]:
    """Chat messages scoring one candidate image against a query (logit mode).

    Laid out as Qwen3-VL-Reranker's official code does: ``<Instruct>``, then ``<Query>:``
    followed by the query image (when there is one) and the query text (when there is
    some), then ``\n<Document>:`` and the candidate. Each ``{"type": "image"}`` part - the
    query image first, the candidate last - is expanded by the processor into that image's
    visual tokens. Without ``instruction``, the default for the query's kind is used.
    """
    kind = query_kind(query, query_image)
    user = [
        {"type": "text", "text": f"<Instruct>: {instruction or DEFAULT_INSTRUCTIONS[kind]}"},
        {"type": "text", "text": "<Query>:"},
        *([{"type": "image"}] if query_image else []),
        *([{"type": "text", "text": query}] if query else []),
        {"type": "text", "text": "\n<Document>:"},
        {"type": "image"},
    ]
    return [_system(SYSTEM_PROMPT), {"role": "user", "content": user}]


def with_document(messages: list[dict], *, image: bool = True, text: str = "") -> list[dict]:
    """``messages`` of :func:`rerank_messages` with the candidate - the last ``{"type": "image"}``
    part - replaced by a document: its image (when ``image``), then its text (when there is some).

    lychee-rerank-mm judges image, text and image+text documents alike (its paper's MIRB-40);
    Qwen3-VL-Reranker lays a document out the same way: ``<Document>:``, the image, the text.
    """
    if not image and not text:
        raise ValueError("a document needs an image, a text or both")
    *system, user = messages
    *before, candidate = user["content"]
    if candidate != {"type": "image"}:
        raise ValueError("the messages do not end with the candidate image part")
    document = [*([candidate] if image else []), *([{"type": "text", "text": text}] if text else [])]
    return [*system, {**user, "content": [*before, *document]}]


def generate_messages(query: str, instruction: str | None = None) -> list[dict]:
    """Chat messages asking a generic VLM for a 0-10 score as text (generate mode)."""
    user = [
        {"type": "image"},
        {"type": "text", "text": f"{instruction or DEFAULT_INSTRUCTION}\nDescription: {query}\n"
                                 "How well does the image match? Answer 'Score: X' (0-10)."},
    ]
    return [_system(GENERATE_SYSTEM_PROMPT), {"role": "user", "content": user}]



def score_template(chat_template: str) -> str:
    """A chat template for a vLLM server: the lychee prompt for vLLM's score routes, the
    checkpoint's ``chat_template`` for everything else.

    ``/v1/rerank`` and ``/score`` render a (query, document) pair as messages with the roles
    ``query`` and ``document`` and pass a request's ``instruction`` as a template variable; for
    them this renders the prompt of :func:`rerank_messages` (a document image becomes
    ``<|vision_start|><|image_pad|><|vision_end|>``). Chat messages - ``/classify``, which the
    ``vllm-server`` backend uses - fall through to ``chat_template`` unchanged.
    """
    score = (
        '{%- set q = messages | selectattr("role", "eq", "query") | map(attribute="content") | first -%}'
        '{%- set d = messages | selectattr("role", "eq", "document") | map(attribute="content") | first -%}'
        "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n"
        # The default instruction follows the query's kind, as in rerank_messages: vLLM renders a query
        # image as its placeholder, so an image query is one whose text holds it.
        '{% set words = q | replace("<|vision_start|><|image_pad|><|vision_end|>", "") | trim %}'
        '{% if "<|vision_start|>" not in q %}{% set fallback = ' + repr(DEFAULT_INSTRUCTIONS["text"]) + " %}"
        "{% elif words %}{% set fallback = " + repr(DEFAULT_INSTRUCTIONS["image+text"]) + " %}"
        "{% else %}{% set fallback = " + repr(DEFAULT_INSTRUCTIONS["image"]) + " %}{% endif %}"
        "<Instruct>: {{ instruction | default(fallback, true) }}"
        "<Query>:{{ q }}\n<Document>:{{ d }}<|im_end|>\n<|im_start|>assistant\n"
    )
    return ('{%- if messages | selectattr("role", "eq", "document") | list | length > 0 -%}' + score
            + "{% else %}" + chat_template + "{% endif %}")
