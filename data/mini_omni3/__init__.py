"""Streaming (Mini-Omni3) data: session builder, parquet schema, dataset / collator / datamodule, sample generator.

Modules: `schema` (the parquet columns), `builder` (conversations -> session audio + reply placement),
`dataset` (light index + lazy rows), `collate` (padded batches), `datamodule` (Lightning), `features` (tower
feature precomputation CLI), `make_sample` (regenerates data/sample_streaming/).
"""
