"""Mini-Omni3: streaming audio in, text out (LISTENING / SPEAKING at every 0.4 s chunk).

tokens (control ids), encoder (chunk-wise Qwen2.5-Omni audio tower), layout (pure sequence builders), model,
metrics / scoring (decision scores), session (real-time API), replay (latency / RTF), convert (released folders).
"""
