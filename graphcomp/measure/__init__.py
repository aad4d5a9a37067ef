"""The measurement layer: input sources, running the float model, reduced statistics.

Used by the passes, by verification and by bench; imports only `graphcomp.core`.
"""
