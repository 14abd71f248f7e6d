"""Helpers around a run: hub downloads, GGUF model import, the ZeroSearch seed's launch-script keys."""
