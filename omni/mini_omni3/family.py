"""The Mini-Omni3 (streaming) family's entry in the registry (omni/families.py; contract: omni/family.py).
It has no per-row answer to score on a split: `eval.py mode=session` replays a recording through a session."""
from omni.family import Family

FAMILY = Family(
    name="mini_omni3",
    title="Mini-Omni3",
    model="omni.mini_omni3.model.MiniOmni3",
    config="omni.mini_omni3.model.MiniOmni3Config",
    datamodule="data.mini_omni3.datamodule.StreamingDataModule",
    inference="omni.mini_omni3.session.MiniOmni3Inference",
    sampling="omni.mini_omni3.session.SessionConfig",
    tasks={},
    reference_field={},
    text_metric_tasks=(),
    tiny_model="mini_omni3_tiny",
    sample_data="streaming_sample",
    wrap_layers=("transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer",
                 "transformers.models.qwen2_5_omni.modeling_qwen2_5_omni.Qwen2_5OmniAudioEncoderLayer"),
    importer="omni.mini_omni3.convert",
    converter="omni.mini_omni3.convert",
    demo="omni.mini_omni3.demo",
    eval_modes={"session": "omni.mini_omni3.replay.eval_session"},
    renamed={"data.streaming.datamodule.StreamingDataModule": "data.mini_omni3.datamodule.StreamingDataModule"},
    # lora=: every Linear of the Qwen2 LLM's blocks (not the audio tower / projector)
    packer="data.mini_omni3.collate.pack",  # data.packing=true: several rows per sequence (data/packing.py)
    lora_targets=("backbone.model.layers.*.self_attn.[qkvo]_proj", "backbone.model.layers.*.mlp.*_proj"),
    # {split}/decision_acc, reply_precision / recall / f1, onset_error from the split's summed decision counts
    split_metric="omni.mini_omni3.metrics.DecisionMetrics",
)
