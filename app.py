"""Hugging Face Space entry point: serve the lychee-rerank-mm web demo (built in ``lychee.web.app``)."""

from lychee.web.app import main

if __name__ == "__main__":
    main()
