"""``python -m tests.clients.dify_rerank``: one rerank through Dify's plugin SDK (``dify_plugin``'s
``OAICompatRerankModel``, which Dify's OpenAI-API-compatible rerank models build on), in a process of its
own: ``import dify_plugin`` monkey-patches the whole interpreter with gevent, as Dify's plugin daemon,
which runs each plugin as its own process, expects. Reads ``{"endpoint_url", "query", "docs", "top_n"}``
as JSON on stdin; prints ``{"docs": [{"index", "text", "score"}, ...]}`` or ``{"error": "..."}``."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from dify_plugin import OAICompatRerankModel
    from dify_plugin.errors.model import InvokeError

    request = json.load(sys.stdin)
    model = OAICompatRerankModel(model_schemas=[])
    try:
        result = model.invoke("lychee-rerank-mm", {"endpoint_url": request["endpoint_url"], "api_key": "unused"},
                              request["query"], request["docs"], top_n=request.get("top_n"))
    except InvokeError as exc:
        print(json.dumps({"error": str(exc)}))
        return
    print(json.dumps({"docs": [d.model_dump() for d in result.docs]}))


if __name__ == "__main__":
    main()
