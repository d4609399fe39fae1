"""The web demo: a Gradio 6 page and its ``/rerank`` and ``/rerank_urls`` API, in a Hugging Face
Space layout. The only package that imports gradio, and only in the page, its panels, the
server and the API modules: what a request means (:mod:`~lychee.web.service`), how a result looks
(:mod:`~lychee.web.view`) and the page's words (:mod:`~lychee.web.i18n`) are plain Python.
"""
