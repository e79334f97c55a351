"""MiniMind-O evaluation pieces: the SpeechSample producer (`speech`)."""
