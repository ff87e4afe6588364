"""End-to-end RLVR demo: GRPO on countdown problems, comparing no entropy term, a fixed entropy coefficient and
AER, over seeds. ``python -m aer.demo`` (``--quick``: a small run; ``--study``: the experiment)."""
