"""Held-out evaluation (EM / cover-EM / F1 per data source) and the tables built from its outputs."""
