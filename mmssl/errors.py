"""User-facing errors: one clear message naming the problem and the fix, never a traceback."""


class MmsslError(Exception):
    """An error caused by user input (recipe, data, paths). The CLI prints it without a traceback."""


class RecipeError(MmsslError):
    """A recipe key, type or value is invalid."""


class DataError(MmsslError):
    """Input data is missing, empty, malformed or lacks a required column."""


class CheckpointError(MmsslError):
    """A checkpoint to resume from does not exist or does not match the recipe."""


class TrainingDiverged(MmsslError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
