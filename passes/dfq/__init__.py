"""dfq: data-free int8 and its steps equalize, absorb-bias, bias-correct (DESIGN.md 5)."""
