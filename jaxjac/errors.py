"""Structured errors of the sensitivity pipeline: the facts as attributes, the advice separate.

Each error is a :class:`ValueError` whose ``str()`` is the Python API's wording: the facts
(:attr:`facts`), then advice in the API's own keywords (``pass drop_nonfinite=True …``). A
front end with other words for the same options (the command line's ``--drop-nonfinite``)
builds its own message from the attributes and ``facts`` instead of rewriting that text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "NoFiniteRowsError",
    "NonFiniteDerivativeError",
    "NonFiniteInputError",
]


class _Advised(ValueError):
    """A ValueError made of facts and, optionally, advice in the Python API's words."""

    advice: str = ""

    def __init__(self, facts: str) -> None:
        self.facts = facts
        super().__init__(f"{facts}; {self.advice}" if self.advice else facts)


class NonFiniteInputError(_Advised):
    """A data row holds NaN or inf (and rows may not be dropped).

    Attributes:
        row: the 0-based data row.
        columns: the 0-based columns with non-finite values, in order.
        values: their values.
        names: the feature names of all columns, or ``None``.
        facts: the description without advice.
    """

    advice = "pass drop_nonfinite=True to skip such rows"

    def __init__(
        self,
        row: int,
        columns: Sequence[int],
        values: Sequence[float],
        names: Sequence[str] | None = None,
    ) -> None:
        self.row = int(row)
        self.columns = tuple(int(c) for c in columns)
        self.values = tuple(float(v) for v in values)
        self.names = tuple(names) if names is not None else None
        shown = ", ".join(
            f"{c + 1}" + (f" ({self.names[c]!r})" if self.names is not None else "") + f" = {v}"
            for c, v in zip(self.columns[:5], self.values[:5], strict=True)
        )
        more = f" and {len(self.columns) - 5} more" if len(self.columns) > 5 else ""
        super().__init__(
            f"data row {self.row + 1} (1-based) has a non-finite value in column {shown}{more} "
            "(columns 1-based): expected finite numbers"
        )


class NonFiniteDerivativeError(_Advised):
    """``f`` or its derivatives are NaN or inf at a finite input row.

    Attributes:
        row: the 0-based data row.
        facts: the message.
    """

    def __init__(self, row: int) -> None:
        self.row = int(row)
        super().__init__(
            f"f or its derivatives are not finite at data row {self.row + 1} (1-based): expected "
            "finite values for finite inputs (overflow in the model?)"
        )


class NoFiniteRowsError(_Advised):
    """Every data row was dropped for non-finite values.

    Attributes:
        n_rows: the data rows.
        facts: the message.
    """

    def __init__(self, n_rows: int) -> None:
        self.n_rows = int(n_rows)
        super().__init__(
            f"no example left: all {self.n_rows} data rows have non-finite values; expected at "
            "least one finite row"
        )


class CheckpointError(_Advised):
    """A checkpoint that cannot be read, or does not belong to this run.

    Attributes:
        path: the checkpoint file or folder.
        facts: the description without advice (to start over).
    """

    advice = "start over with resume=False, or remove the checkpoint folder"

    def __init__(self, path: str | Path, facts: str) -> None:
        self.path = Path(path)
        super().__init__(facts)


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was made for other inputs (model, data or options).

    Attributes:
        path: the checkpoint folder.
        differences: what differs, sorted: the library's words for its own fingerprint entries
            (``"data"``, ``"model parameters"``, …) and the caller's entries by their keys.
        facts: the description without advice.
    """

    def __init__(self, path: str | Path, differences: Sequence[str]) -> None:
        self.differences = tuple(differences)
        super().__init__(
            path,
            f"the checkpoint in {path} was made for different inputs "
            f"({', '.join(self.differences)} differ): expected the same model, data and options "
            "to resume",
        )
