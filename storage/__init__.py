"""Exemplar's database: the only package that holds SQL. It imports nothing else of the project."""

from storage.errors import ConflictError, ExemplarError, NotFoundError, ValidationError
from storage.store import Store

__all__ = ["ConflictError", "ExemplarError", "NotFoundError", "Store", "ValidationError"]
