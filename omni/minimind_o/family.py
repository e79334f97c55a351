"""The MiniMind-O (Thinker-Talker) family's entry in the registry (omni/families.py; contract: omni/family.py)."""
from omni.family import Family

FAMILY = Family(
    name="minimind_o",
    title="MiniMind-O",
    model="omni.minimind_o.model.MiniMindO",
    config="omni.minimind_o.model.MiniMindOConfig",
    datamodule="data.minimind_o.datamodule.MiniMindODataModule",
    inference="omni.minimind_o.infer.MiniMindOInference",
    sampling="builtins.dict",  # the helper maps the eval / callback settings itself (omni/minimind_o/infer.py)
    tasks={"t2a": True, "a2a": True, "i2t": False},  # omni.minimind_o.infer.TASKS
    reference_field={"t2a": "answer_text", "a2a": "answer_text", "i2t": "answer_text"},
    text_metric_tasks=("t2a", "a2a", "i2t"),
    tiny_model="minimind_o_tiny",
    sample_data="minimind_sample",
    wrap_layers=("transformers.models.qwen3.modeling_qwen3.Qwen3DecoderLayer",   # Thinker and Talker blocks
                 "transformers.models.whisper.modeling_whisper.WhisperEncoderLayer",
                 "transformers.models.siglip.modeling_siglip.SiglipEncoderLayer"),
    speech="callbacks.minimind_o.speech.MiniMindOSpeech",
    importer="omni.minimind_o.convert",
    converter="omni.minimind_o.convert",
    demo="omni.minimind_o.demo",
    packer="data.minimind_o.collate.pack",  # data.packing=true: several rows per sequence (data/packing.py)
    # lora=: every Linear of the Thinker's blocks (MoE experts included; not the Talker, projectors, tied head)
    lora_targets=("thinker.model.layers.*.self_attn.[qkvo]_proj", "thinker.model.layers.*.mlp.*_proj"),
    hf_schemas="data.minimind_o.hf",  # data.source=hf: the published schemas it reads (data/hf.py)
)
