"""MiniOmniCollator on a hand-built 2-item batch (asr + t1a2) with a small token table."""
from __future__ import annotations

import torch

from data.mini_omni.collate import MiniOmniCollator
from data.dataset import Skipped
from omni.mini_omni.tokens import IGNORE, MiniOmniTokens

torch.set_num_threads(1)

TOK = MiniOmniTokens(text_vocab=100, codebook_size=32)  # PAD_T 101, PAD_A 33


def asr_example() -> dict:
    return {"id": "a", "task": "asr", "question_ids": None, "mels": torch.ones(4, 10), "n_audio_frames": 3,
            "answer_ids": [5, 6], "answer_codes": None, "answer_text": None, "question_text": "hi"}


def t1a2_example() -> dict:
    codes = torch.arange(14).view(2, 7)
    return {"id": "b", "task": "t1a2", "question_ids": [7, 8], "mels": None, "n_audio_frames": 0,
            "answer_ids": [9, 10], "answer_codes": codes, "answer_text": "yo", "question_text": "q"}


def test_two_item_batch_is_padded_per_row_with_ignore_targets():
    bad = Skipped("f.parquet", 3, "c", "question_audio", "bad_audio", "corrupt")
    batch = MiniOmniCollator(TOK)([asr_example(), bad, t1a2_example()])
    # asr: prompt T+3 = 6, answer m+1 = 3 -> L = 8; t1a2: prompt n+3 = 5, answer max(3, 2+8) = 10 -> L = 14
    assert batch["input_ids"].shape == (2, 8, 14) and batch["targets"].shape == (2, 8, 14)
    assert batch["attention_mask"].sum(1).tolist() == [8, 14]
    assert batch["n_tokens"] == 8 + 14 == int(batch["attention_mask"].sum())
    pad = batch["input_ids"][0, :, 8:]
    assert (pad[:7] == TOK.pad_a).all() and (pad[7] == TOK.pad_t).all()
    assert (batch["targets"][0, :, 8:] == IGNORE).all()
    # asr text targets: answer tokens then EOT, scored from the prompt's last position (5)
    assert batch["targets"][0, 7, 5:8].tolist() == [5, 6, TOK.eot]
    assert (batch["targets"][0, :7] == IGNORE).all()  # ASR: text loss only
    # t1a2 layer 0 target: frame codes 0, 7 then EOA, one step behind text
    assert batch["targets"][1, 0, 5:8].tolist() == [0, 7, TOK.eoa]
    assert batch["input_ids"][1, 7, :5].tolist() == [TOK.input_t, 7, 8, TOK.eot, TOK.answer_t]
    # audio fields: only item 0 has audio
    assert batch["audio_mels"].shape == (1, 4, 10) and batch["audio_mels"].dtype == torch.float32
    assert batch["audio_index"].tolist() == [0]
    assert batch["audio_start"].tolist() == [1] and batch["audio_len"].tolist() == [3]
    assert batch["prompt_len"].tolist() == [6, 5]
    assert batch["tasks"] == ["asr", "t1a2"] and batch["ids"] == ["a", "b"]
    assert batch["answer_text"] == ["hi", "yo"]
    assert batch["skipped"] == [bad.as_dict()] and batch["skipped"][0]["row"] == 3


def test_transcripts_of_audio_items_are_padded_for_the_ctc_loss():
    second = {**asr_example(), "id": "c", "transcript_ids": None}  # a row with no question_text
    batch = MiniOmniCollator(TOK)([{**asr_example(), "transcript_ids": [3, 4, 5]}, t1a2_example(), second])
    assert batch["audio_index"].tolist() == [0, 2]
    assert batch["audio_text"].tolist() == [[3, 4, 5], [0, 0, 0]] and batch["audio_text_len"].tolist() == [3, 0]
    assert MiniOmniCollator(TOK)([t1a2_example()])["audio_text"].shape == (0, 0)


def test_text_only_and_empty_batches():
    batch = MiniOmniCollator(TOK)([t1a2_example()])
    assert batch["audio_mels"] is None and batch["audio_index"].numel() == 0
    empty = MiniOmniCollator(TOK)([Skipped("f", 0, "x", "answer_codes", "bad_codes")])
    assert empty["input_ids"].shape == (0, 8, 0) and empty["n_tokens"] == 0 and len(empty["skipped"]) == 1


def test_generation_prompt_matches_the_training_prompt():
    from omni.mini_omni.infer import build_prompt

    collator = MiniOmniCollator(TOK)
    for example in (asr_example(), t1a2_example()):
        prompt, mels, n_audio = build_prompt(TOK, example, example["task"])
        layout = collator.layout(example)
        assert torch.equal(prompt, layout.inputs[:, : layout.prompt_len])
        assert n_audio == layout.audio_len
    assert build_prompt(TOK, asr_example(), "asr")[1].shape == (4, 10)
