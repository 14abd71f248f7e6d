"""The synthetic world the CPU quickstart runs on (entities, questions, corpus, tiny tokenizers and models, the
policy's prior texts), the quickstart pipeline itself, and the miniature experiment table."""
