"""Data for the MiniMind-O (Thinker–Talker) family: the released parquet schema read as is (schema.py), a lazy
dataset + datamodule on the shared token-budget sampler (dataset.py, datamodule.py), pure collation
(collate.py), preparation from audio + text (prepare.py) and the bundled sample generator (make_sample.py)."""
