"""Data: QA files (TOFU format), tokenizers, and the built-in benchmark."""
