"""Errors the project raises for input a user can fix (each message names the key or file and the fix)."""

from __future__ import annotations


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key and the fix."""
