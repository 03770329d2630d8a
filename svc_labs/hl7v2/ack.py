"""Build HL7 v2 ACK messages: MSH, MSA and, for AE and AR, an ERR segment."""

from __future__ import annotations

from datetime import datetime

from svc_labs.hl7v2.er7 import CHARACTER_SETS, Delimiters
from svc_labs.hl7v2.errors import ERROR_CODE_TEXT, Hl7Error
from svc_labs.hl7v2.messages import Header

ACCEPT = "AA"
ERROR = "AE"
REJECT = "AR"

#: Version written in MSH-12 of an ACK when the message did not give one.
DEFAULT_VERSION = "2.5.1"

_STANDARD = Delimiters()


def build_ack(
    header: Header,
    *,
    code: str,
    control_id: str,
    now: datetime,
    error: Hl7Error | None = None,
    text: str = "",
) -> bytes:
    """Build the ACK for a message, segments terminated by CR.

    ``header`` is what could be read from the message's MSH (empty fields
    when nothing could). The ACK is encoded in the message's MSH-18
    character set and declares it, so the sender can read ERR-8.
    """
    charset = header.character_set if header.character_set in CHARACTER_SETS else ""
    msh = [
        "MSH",
        _STANDARD.encoding_characters(),
        _escape(header.receiving_application),
        _escape(header.receiving_facility),
        _escape(header.sending_application),
        _escape(header.sending_facility),
        now.strftime("%Y%m%d%H%M%S%z"),
        "",
        "ACK^" + _escape(header.trigger) + "^ACK",
        _escape(control_id),
        "P",
        _escape(header.version or DEFAULT_VERSION),
    ]
    if charset:
        msh += [""] * 5 + [charset]
    msa_text = error.user_message if error is not None else text
    segments = [
        "|".join(msh),
        "|".join(["MSA", code, _escape(header.control_id), _escape(msa_text)]),
    ]
    if error is not None:
        segments.append(_err_segment(error))
    codec = CHARACTER_SETS.get(charset, "utf-8")
    return ("\r".join(segments) + "\r").encode(codec, errors="replace")


def _err_segment(error: Hl7Error) -> str:
    location = ""
    if error.location is not None and error.location.segment:
        where = error.location
        parts = [
            where.segment,
            str(where.sequence or ""),
            str(where.field or ""),
            str(where.repetition or (1 if where.field else "")),
            str(where.component or ""),
        ]
        location = "^".join(parts).rstrip("^")
    code_text = ERROR_CODE_TEXT.get(error.code, "Application error")
    fields = [
        "ERR",
        "",
        location,
        f"{error.code}^{_escape(code_text)}^HL70357",
        "E",
        "",
        "",
        "",
        _escape(error.user_message),
    ]
    return "|".join(fields)


def _escape(text: str) -> str:
    """Escape the standard delimiters in ``text`` for an ACK field."""
    escaped = text.replace("\\", "\\E\\")
    for char, sequence in (
        ("|", "\\F\\"),
        ("^", "\\S\\"),
        ("&", "\\T\\"),
        ("~", "\\R\\"),
    ):
        escaped = escaped.replace(char, sequence)
    return escaped.replace("\r", " ").replace("\n", " ")
