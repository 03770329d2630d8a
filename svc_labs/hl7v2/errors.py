"""Errors that make the listener acknowledge a message with AE or AR."""

from __future__ import annotations

from dataclasses import dataclass

#: HL7 table 0357 message error condition codes used in ERR-3.
CODE_SEGMENT_SEQUENCE_ERROR = 100
CODE_REQUIRED_FIELD_MISSING = 101
CODE_DATA_TYPE_ERROR = 102
CODE_TABLE_VALUE_NOT_FOUND = 103
CODE_UNSUPPORTED_MESSAGE_TYPE = 200
CODE_UNSUPPORTED_EVENT_CODE = 201
CODE_DUPLICATE_KEY = 205
CODE_APPLICATION_INTERNAL_ERROR = 207

ERROR_CODE_TEXT = {
    CODE_SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    CODE_REQUIRED_FIELD_MISSING: "Required field missing",
    CODE_DATA_TYPE_ERROR: "Data type error",
    CODE_TABLE_VALUE_NOT_FOUND: "Table value not found",
    CODE_UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    CODE_UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    CODE_DUPLICATE_KEY: "Duplicate key identifier",
    CODE_APPLICATION_INTERNAL_ERROR: "Application internal error",
}


@dataclass(frozen=True)
class ErrorLocation:
    """ERR-2 error location: segment, its occurrence, field, repetition, component.

    Zero means "not applicable" for every number.
    """

    segment: str
    sequence: int
    field: int = 0
    repetition: int = 0
    component: int = 0

    def describe(self) -> str:
        """Return the location in words, for example "OBX #17 OBX-5"."""
        if not self.segment:
            return "message"
        text = self.segment if not self.sequence else f"{self.segment} #{self.sequence}"
        if self.field:
            text += f" {self.segment}-{self.field}"
            if self.component:
                text += f".{self.component}"
            if self.repetition > 1:
                text += f" repetition {self.repetition}"
        return text


class Hl7Error(Exception):
    """A message cannot be stored as sent.

    ``reject`` selects the acknowledgment code: AR (application reject) for a
    message the listener does not take at all (broken MSH, unsupported type),
    AE (application error) for content errors in a supported message.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int,
        location: ErrorLocation | None = None,
        reject: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.location = location
        self.reject = reject

    @property
    def user_message(self) -> str:
        """Return ERR-8: the location followed by what is wrong."""
        if self.location is None or not self.location.segment:
            return self.message
        return f"{self.location.describe()}: {self.message}"
