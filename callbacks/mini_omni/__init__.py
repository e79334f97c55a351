"""Mini-Omni / Mini-Omni2 evaluation pieces: the SpeechSample producer (`speech`)."""
