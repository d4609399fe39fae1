"""Hugging Face Space entry point (the web demo is built in a later step)."""
