"""waferllm: wafer-scale LLM inference on a simulated PLMR mesh."""

__version__ = "0.1.0"


class WaferError(Exception):
    """A user-facing error: the CLI prints its one-line message and exits non-zero."""

    exit_code = 2
