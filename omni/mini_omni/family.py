"""The Mini-Omni / Mini-Omni2 family's entry in the registry (omni/families.py; contract: omni/family.py)."""
from omni.family import Family

FAMILY = Family(
    name="mini_omni",
    title="Mini-Omni / Mini-Omni2",
    model="omni.mini_omni.model.MiniOmni",
    config="omni.mini_omni.model.MiniOmniConfig",
    datamodule="data.mini_omni.datamodule.MiniOmniDataModule",
    inference="omni.mini_omni.infer.MiniOmniInference",
    sampling="omni.mini_omni.generate.SamplingConfig",
    # the layout's tasks (omni/mini_omni/layout.py TASKS) that have a text reference; True: spoken answer
    tasks={"asr": False, "a1t2": False, "a1a2": True, "t1t2": False, "t1a2": True},
    reference_field={"asr": "question_text", "a1t2": "answer_text", "a1a2": "answer_text", "t1t2": "answer_text",
                     "t1a2": "answer_text"},
    text_metric_tasks=("asr", "a1t2"),
    tiny_model="mini_omni_tiny",
    sample_data="sample",
    wrap_layers=("transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer",
                 "transformers.models.whisper.modeling_whisper.WhisperEncoderLayer",
                 "transformers.models.clip.modeling_clip.CLIPEncoderLayer",          # Mini-Omni2 vision tower
                 "transformers.models.siglip.modeling_siglip.SiglipEncoderLayer"),   # vision_arch=siglip
    speech="callbacks.mini_omni.speech.MiniOmniSpeech",
    importer="omni.mini_omni.convert",
    converter="omni.mini_omni.convert",
    demo="omni.mini_omni.demo",
    aux_prefixes=("audio_ctc.",),  # omni.mini_omni.model.AUX_PREFIXES: the CTC head trains only
    resolvers={"omni.image_tokens": "omni.mini_omni.vision.image_tokens"},
    packer="data.mini_omni.collate.pack",  # data.packing=true: several rows per sequence (data/packing.py)
    renamed={"data.datamodule.OmniDataModule": "data.mini_omni.datamodule.MiniOmniDataModule"},  # before data/mini_omni/
    # lora=: every Linear of the Qwen2 LLM's blocks (not the TTS adapter's, not the head / embeddings)
    lora_targets=("backbone.model.layers.*.self_attn.[qkvo]_proj", "backbone.model.layers.*.mlp.*_proj"),
    hf_schemas="data.mini_omni.hf",  # data.source=hf: the published schemas it reads (data/hf.py)
)
