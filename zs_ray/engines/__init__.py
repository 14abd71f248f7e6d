"""Generation engines behind one async interface: vLLM (with its version- and CPU-specific fixes in
vllm_compat) and a transformers fallback; engine_kwargs derives every engine's settings from one config."""
