"""QA data: loading and validating Search-R1 / FlashRAG rows (qa), and building the real data set (real)."""
