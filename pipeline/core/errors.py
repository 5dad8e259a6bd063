"""User-facing input errors: one line, naming the file and the problem; the CLI exits with code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input (missing or corrupt file, wrong format, mismatched checkpoint)."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded into the model it is meant for."""
