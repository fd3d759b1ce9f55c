"""Reports drawn from result records: Markdown report, tables, figures, CSV and CLIP_benchmark exports,
the overlap record. It reads records and runs nothing, so it never imports torch."""
