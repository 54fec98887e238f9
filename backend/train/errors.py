"""The training error every part of a run raises for input it cannot use."""


class TrainingError(ValueError):
    """A run that cannot start or continue (the message says why)."""
