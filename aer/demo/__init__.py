"""End-to-end RLVR demo: GRPO on generated sorting tasks, comparing no entropy term, fixed entropy
coefficients and AER. Run ``python -m aer.demo`` (``--quick`` for a smaller run)."""
