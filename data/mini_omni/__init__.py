"""Data for the Mini-Omni / Mini-Omni2 family: the parquet schema (schema.py), the light index + lazy dataset
(dataset.py) and its length estimate (lengths.py), pure collation (collate.py), the datamodule (datamodule.py),
the SNAC codec (codec.py), preparation from manifests / VoiceAssistant-400K (prepare.py, the `omni-data`
script) and the bundled sample generators (make_sample.py, make_vision_sample.py)."""
