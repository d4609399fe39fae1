"""Hugging Face Space entry point: serve the lychee-rerank-mm web demo (served by ``lychee.web.server``)."""

from lychee.web.server import main

if __name__ == "__main__":
    main()
