"""Names shared by the CLI, the methods and the results files; importable without torch."""

OPS = ("entropy", "logprobs_and_entropy")
MODES = ("fwd", "bwd", "fwd+bwd")
METHOD_NAMES = ("aer_kernels", "torch_compile", "trl", "liger_ce", "eager_bf16", "eager_fp16", "eager_fp32",
                "chunked")
# KERNELS.md §4: the target shape, the small batch, the small vocabulary.
HEADLINE_SHAPES = ((8192, 151936), (2048, 151936), (65536, 32000))
