"""Hugging Face Space entry point: serve the lychee-rerank-mm web demo (built in ``lychee.ui``)."""

from lychee.ui import main

if __name__ == "__main__":
    main()
