"""Names shared by the CLI, the methods and the results files; importable without torch."""

SINGLE_GPU_OPS = ("entropy", "logprobs_and_entropy")
# The tensor-parallel op, timed at world size 1: its shard is the whole row, so it is compared with
# logprobs_and_entropy at the same shape (target: within 10% of the single-GPU op).
VOCAB_PARALLEL_OP = "vocab_parallel_logprobs_and_entropy"
OPS = (*SINGLE_GPU_OPS, VOCAB_PARALLEL_OP)
MODES = ("fwd", "bwd", "fwd+bwd")
METHOD_NAMES = ("aer_kernels", "torch_compile", "trl", "liger_ce", "eager_bf16", "eager_fp16", "eager_fp32", "chunked")
# The headline shapes: the target shape, the small batch, the small vocabulary.
HEADLINE_SHAPES = ((8192, 151936), (2048, 151936), (65536, 32000))
