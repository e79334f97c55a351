"""Streaming speech out: frames leave the delayed grid in spec order as soon as layer 6 has them, chunks of
`stride` frames are decoded, and a tiny model + tiny SNAC produce audio of exactly n_frames * 2048 samples."""
from functools import partial

import numpy as np
import torch

from data.mini_omni.codec import codec_sample_rate, decode_frames, load_codec
from omni.mini_omni.generate import SamplingConfig
from omni.mini_omni.infer import MiniOmniInference
from omni.mini_omni.layout import answer_grid, snac_to_frames
from omni.mini_omni.stream import FrameAssembler, stream_events
from omni.mini_omni.tokens import MiniOmniTokens

torch.set_num_threads(1)
TOK = MiniOmniTokens(text_vocab=100, codebook_size=50)


def spec_frames(n):
    """Frames built from SNAC levels through the spec's de-interleaving table."""
    l0 = torch.arange(n)
    l1 = torch.arange(2 * n) % 50
    l2 = (torch.arange(4 * n) * 3) % 50
    return snac_to_frames(l0, l1, l2)


def grid_columns(text, frames):
    grid, _ = answer_grid(TOK, text, frames)
    return [grid[:, k].unsqueeze(0) for k in range(grid.shape[1])]  # (1, 8) per step


def test_frames_complete_at_step_t_plus_7_in_spec_order():
    frames = spec_frames(5)
    asm = FrameAssembler(TOK)
    got, completed_at = [], []
    for k, col in enumerate(grid_columns([1, 2], frames)):
        new = asm.push(col[0, :7])
        got += new
        completed_at += [k] * len(new)
    assert torch.equal(torch.stack(got), frames)
    assert completed_at == [7, 8, 9, 10, 11]  # frame t is complete once layer 6 emitted it, at step t + 7
    assert asm.ended  # EOA stops the assembler


def test_stream_events_chunks_and_text_pieces():
    frames = spec_frames(10)
    decoded = []

    def fake_audio(chunk):
        decoded.append(chunk)
        return np.zeros(chunk.shape[0] * 2048, dtype=np.float32)

    events = list(stream_events(TOK, grid_columns([3, 4, 5], frames), lambda ids: "".join(map(chr, [96 + i for i in ids])),
                                fake_audio, stride=4))
    assert [c.shape[0] for c in decoded] == [4, 4, 2]
    assert torch.equal(torch.cat(decoded), frames)
    assert "".join(e.text for e in events) == "cde"
    assert events[-1].done and sum(e.audio is not None for e in events) == 3


def test_tiny_model_streams_playable_audio(tiny_model):
    codec = load_codec(arch="tiny", seed=0)
    infer = MiniOmniInference(tiny_model, tokenizer=None)
    infer.decode_text = lambda ids: " ".join(map(str, ids))
    ex = {"question_ids": [5, 6, 7], "answer_ids": [5], "mels": None, "n_audio_frames": 0}
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=20)
    events = list(infer.stream(ex, "t1a2", sampling, partial(decode_frames, codec), stride=4))
    n_frames = sum(int(e.frames.shape[0]) for e in events if e.frames is not None)
    audio = np.concatenate([e.audio for e in events if e.audio is not None])
    # frames start at step 7; random weights decoded unforced (the released way) may emit a special token (a frame
    # holding one ends the audio) before step 20
    assert 0 < n_frames <= 20 - 7
    assert codec_sample_rate(codec) == 24000 and audio.shape == (n_frames * 2048,) and np.isfinite(audio).all()
    whole = infer.answer(ex, "t1a2", sampling)
    assert torch.equal(whole.frames, torch.cat([e.frames for e in events if e.frames is not None]))
