"""User-facing errors.

Anything a user can cause (a bad path, a wrong file, a bad option) is raised as a
:class:`DsvaeError`. The CLI prints its message on one line and exits non-zero;
library callers can catch it. Programming errors stay ordinary exceptions.
"""


class DsvaeError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class NotApplicable(DsvaeError):
    """The operation does not exist for this model (e.g. a sequence prior of an image model)."""


class TrainingDiverged(DsvaeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
