"""The framework's own exceptions, in one place every layer may import."""
from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work, said in one line (the launcher prints it without a traceback)."""


class TransductiveEvaluationError(ConfigError):
    """The encoder saw test speakers' audio and the run did not opt in to a transductive score."""


class UnknownProvenanceError(ConfigError):
    """A checkpoint (or one it was warm-started from) records no speakers, and the run did not opt in."""
