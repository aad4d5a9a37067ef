"""The core: pass contract and context, errors, graph queries, model I/O, shared math.

Everything here is below the measurement layer and the passes; it imports nothing
from `graphcomp.measure`, `graphcomp.passes`, `graphcomp.bench` or the run driver.
"""
