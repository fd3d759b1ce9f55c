"""Plumbing every layer may use: atomic file I/O, logging, devices, torchrun processes, folder locks,
Markdown tables and lazy package faces. Nothing here knows about CLIP or few-shot learning."""
