"""Collect field violations of a request and raise them together."""

from __future__ import annotations

from mesh.runtime.errors import FieldViolation, InvalidArgument


class Violations:
    """Field violations found while validating one request."""

    def __init__(self) -> None:
        self._items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        """Record that ``field`` is invalid and why, in words a caller can act on."""
        self._items.append(FieldViolation(field, description))

    def require(self, value: object, field: str) -> None:
        """Record ``field`` as missing when ``value`` is empty."""
        if not value:
            self.add(field, "is required")

    def __bool__(self) -> bool:
        return bool(self._items)

    @property
    def items(self) -> tuple[FieldViolation, ...]:
        return tuple(self._items)

    def check(self, message: str = "") -> None:
        """Raise InvalidArgument naming every recorded field, if there is any."""
        if not self._items:
            return
        fields = ", ".join(v.field for v in self._items)
        raise InvalidArgument(
            message or f"invalid request: {fields}",
            violations=self._items,
            reason="INVALID_REQUEST",
        )
