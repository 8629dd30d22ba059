"""The one exception type for bad input data.

Every path that meets a corrupt shard, a missing key, a wrong shape or a non-finite value raises
:class:`DataError`, so the caller can decide in one place whether to stop (``on_bad_sample:
error``) or count and skip (``on_bad_sample: skip``). The message always names where the problem
is: ``<file>: episode 12, field 'steps/action': contains NaN``.
"""

from __future__ import annotations

from typing import Any


class DataError(Exception):
    """Bad input data, located by file, episode and field (each optional)."""

    def __init__(
        self,
        reason: str,
        *,
        file: Any = None,
        episode: int | None = None,
        field: str | None = None,
        record: int | None = None,
    ) -> None:
        self.reason = reason
        """What is wrong, without the location (e.g. ``contains NaN``)."""
        self.file = None if file is None else str(file)
        """Path of the offending file (shard, video, JSON), if known."""
        self.episode = episode
        """Episode index within the split being read, if known."""
        self.field = field
        """Flat feature key (e.g. ``steps/action``), if the problem is in one field."""
        self.record = record
        """Record index within the file (TFRecord framing errors), if known."""
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.episode is not None:
            where.append(f"episode {self.episode}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        prefix = f"{self.file}: " if self.file else ""
        loc = ", ".join(where)
        return f"{prefix}{loc}: {self.reason}" if loc else f"{prefix}{self.reason}"

    def located(self, *, file: Any = None, episode: int | None = None, field: str | None = None) -> DataError:
        """A copy with missing location parts filled in (lower layers know less than callers)."""
        err = DataError(
            self.reason,
            file=self.file if self.file is not None else file,
            episode=self.episode if self.episode is not None else episode,
            field=self.field if self.field is not None else field,
            record=self.record,
        )
        err.__cause__ = self.__cause__
        return err

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only __init__ args: make the error picklable across worker processes.
        return (_rebuild, (self.reason, self.file, self.episode, self.field, self.record))


def _rebuild(reason: str, file: str | None, episode: int | None, field: str | None, record: int | None) -> DataError:
    return DataError(reason, file=file, episode=episode, field=field, record=record)


__all__ = ["DataError"]
