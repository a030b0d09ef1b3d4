"""Interoperability: llmlab models to and from Hugging Face transformers."""
