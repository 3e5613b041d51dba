"""Errors of the training recipes: one-line messages that say what to do."""

from export_tools import ExportError


class RecipeError(ExportError):
    """Bad input to a recipe (missing dataset, mismatched checkpoint, unknown caption word)."""
