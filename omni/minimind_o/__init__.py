"""MiniMind-O (Thinker–Talker) family: Qwen3-style Thinker, Talker predicting 8 Mimi codebooks per position,
audio / vision projectors, voice conditioning by reference codes and a speaker embedding.
Facts to match: ../shared/spec/minimind_o.md."""
