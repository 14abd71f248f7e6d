"""Supervised fine-tuning: the shared SFT loop, the search simulator's fine-tuning and its data, and the
format warm start of a real policy."""
