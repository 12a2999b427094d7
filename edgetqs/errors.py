"""Error types. Every message names the bad value, what was expected and what to do."""

from __future__ import annotations


class EdgetqsError(Exception):
    """Base class of every error edgetqs raises on purpose (the CLI prints it on one line)."""


class BadInputError(EdgetqsError):
    """A file or option given by the user is missing or malformed."""


class BadModelError(EdgetqsError):
    """The model file cannot be used (not ONNX, no float weights, unsupported shapes)."""


class RolloutSpecError(EdgetqsError):
    """How outputs feed back into inputs cannot be inferred or is inconsistent."""


class ContextsError(EdgetqsError):
    """The initial states do not fit the model or the requested number of windows."""


class DivergedRolloutError(EdgetqsError):
    """The float reference rollout itself left the finite numbers."""


class ProjectFileError(EdgetqsError):
    """`edgetqs.toml` has an unknown key or a value of the wrong type."""


class SweepWorkerError(EdgetqsError):
    """The workers of a parallel sweep kept dying (or could not start), so its tasks could not be finished."""


class OptionalDependencyError(EdgetqsError):
    """A feature needs a package from an extra that is not installed."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the package '{package}', which is not installed; install it with: pip install 'edgetqs[{extra}]'"
        )
