"""Decode HL7 v2 ER7 (pipe-delimited) bytes into segments, fields and text.

The decoder accepts what real feeds send. Segment terminators may be CR, LF
or CRLF, mixed within one message. A UTF-8 byte-order mark is skipped, and
MSH-18 selects the character set. Delimiters come from MSH-1 and MSH-2. A bare
line break inside free text continues the previous segment, and a message with
no line breaks at all is split before known segment ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from svc_labs.hl7v2.errors import (
    CODE_DATA_TYPE_ERROR,
    CODE_SEGMENT_SEQUENCE_ERROR,
    CODE_TABLE_VALUE_NOT_FOUND,
    ErrorLocation,
    Hl7Error,
)

UTF8_BOM = b"\xef\xbb\xbf"

#: HL7 table 0211 character sets and the Python codec that decodes each.
#: An empty MSH-18 means ASCII, which UTF-8 decodes as well.
CHARACTER_SETS: dict[str, str] = {
    "": "utf-8",
    "ASCII": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
}

#: Segment ids that split a message sent without line breaks. Z-segments are
#: matched by pattern instead.
KNOWN_SEGMENT_IDS = frozenset(
    "MSH SFT UAC EVN PID PD1 NTE NK1 PV1 PV2 DB1 OBX AL1 DG1 DRG PR1 ROL GT1 "
    "IN1 IN2 IN3 ACC UB1 UB2 PDA ORC OBR TQ1 TQ2 CTD CTI SPM SAC FT1 BLG DSC "
    "MSA ERR SCH AIS AIG AIL AIP RGS TXA RXO RXR RXE RXA PRT ARV MRG".split()
)

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_SEGMENT_START = re.compile(rb"[A-Z][A-Z0-9]{2}")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class Delimiters:
    """Separators from MSH-1 and MSH-2; an absent one is the empty string."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    def encoding_characters(self) -> str:
        """Return MSH-2 for these delimiters."""
        return self.component + self.repetition + self.escape + self.subcomponent


@dataclass(frozen=True)
class Segment:
    """One segment with its raw (still escaped) fields.

    ``fields[0]`` is the segment id, so ``fields[n]`` is field n. For MSH the
    list is shifted by one so that the same holds: ``fields[1]`` is MSH-1 (the
    field separator) and ``fields[2]`` is MSH-2.
    """

    id: str
    #: Position of this segment among the segments with the same id, from 1.
    sequence: int
    fields: tuple[str, ...]
    delimiters: Delimiters

    def raw(self, field: int) -> str:
        """Return field ``field`` exactly as sent, or "" when absent."""
        return self.fields[field] if field < len(self.fields) else ""

    def repetitions(self, field: int) -> list[str]:
        """Return the raw repetitions of a field (one item when not repeated)."""
        raw = self.raw(field)
        if not raw:
            return []
        if not self.delimiters.repetition or self.id == "MSH" and field <= 2:
            return [raw]
        return raw.split(self.delimiters.repetition)

    def components(self, field: int, repetition: int = 1) -> list[str]:
        """Return the decoded components of one repetition of a field."""
        repetitions = self.repetitions(field)
        if repetition > len(repetitions):
            return []
        raw = repetitions[repetition - 1]
        parts = (
            raw.split(self.delimiters.component) if self.delimiters.component else [raw]
        )
        return [self.text_of(part) for part in parts]

    def component(self, field: int, component: int = 1, repetition: int = 1) -> str:
        """Return one decoded component, or "" when absent."""
        components = self.components(field, repetition)
        return components[component - 1] if component <= len(components) else ""

    def subcomponents(
        self, field: int, component: int, repetition: int = 1
    ) -> list[str]:
        """Return the decoded subcomponents of one component."""
        repetitions = self.repetitions(field)
        if repetition > len(repetitions):
            return []
        raw = repetitions[repetition - 1]
        parts = (
            raw.split(self.delimiters.component) if self.delimiters.component else [raw]
        )
        if component > len(parts):
            return []
        raw_component = parts[component - 1]
        if not self.delimiters.subcomponent:
            return [self.text_of(raw_component)]
        return [
            self.text_of(p) for p in raw_component.split(self.delimiters.subcomponent)
        ]

    def text(self, field: int) -> str:
        """Return a whole field as text: escapes decoded, repetitions on new lines.

        Component and subcomponent separators stay as they were sent, which is
        what a free-text type (ST, TX, FT) means by them.
        """
        return "\n".join(self.text_of(r) for r in self.repetitions(field))

    def text_of(self, raw: str) -> str:
        """Decode the escape sequences of ``raw`` with this segment's delimiters."""
        return unescape(raw, self.delimiters)

    def location(
        self, field: int = 0, repetition: int = 0, component: int = 0
    ) -> ErrorLocation:
        """Return the ERR-2 location of a field of this segment."""
        return ErrorLocation(self.id, self.sequence, field, repetition, component)


@dataclass(frozen=True)
class Message:
    """Decoded ER7 message: its delimiters, character set and segments."""

    delimiters: Delimiters
    #: Python codec the message's bytes were decoded with.
    codec: str
    segments: tuple[Segment, ...]

    @property
    def msh(self) -> Segment:
        return self.segments[0]


def decode(data: bytes) -> Message:
    """Decode one ER7 message.

    Raises:
        Hl7Error: MSH is missing or broken (reject), the character set is not
            supported (reject), or a segment cannot be decoded (error).
    """
    data = _strip_preamble(data)
    _check_starts_with_msh(data)
    delimiters = _read_delimiters(data)
    lines = _split_segments(data, delimiters.field.encode("ascii"))
    codec = _codec_of(lines[0], delimiters)

    segments: list[Segment] = []
    counts: dict[str, int] = {}
    for index, line in enumerate(lines):
        text = _decode_line(line, codec, index)
        segment_id = text[:3]
        counts[segment_id] = counts.get(segment_id, 0) + 1
        segments.append(_make_segment(text, segment_id, counts[segment_id], delimiters))
    return Message(delimiters=delimiters, codec=codec, segments=tuple(segments))


def decode_header(data: bytes) -> Message:
    """Decode only the MSH segment, so that a message with a broken later
    segment can still be acknowledged.

    Raises:
        Hl7Error: MSH is missing or broken, or its character set is not
            supported.
    """
    data = _strip_preamble(data)
    _check_starts_with_msh(data)
    delimiters = _read_delimiters(data)
    first = _LINE_BREAK.split(data, maxsplit=1)[0]
    first = _split_unbroken(first, delimiters.field.encode("ascii"))[0]
    codec = _codec_of(first, delimiters)
    text = _decode_line(first, codec, 0)
    segment = _make_segment(text, "MSH", 1, delimiters)
    return Message(delimiters=delimiters, codec=codec, segments=(segment,))


def unescape(raw: str, delimiters: Delimiters) -> str:
    r"""Decode HL7 escape sequences (\F\ \S\ \T\ \R\ \E\ \.br\ \Xhh..\ \H\ \N\).

    Highlighting (\H\ \N\) and character-set switches (\C..\ \M..\) are
    dropped; an unterminated or unknown sequence is kept as sent. Line breaks
    of any kind become "\n".
    """
    escape = delimiters.escape
    if not escape or escape not in raw:
        return _normalize_newlines(raw)
    out: list[str] = []
    position = 0
    while position < len(raw):
        start = raw.find(escape, position)
        if start < 0:
            out.append(raw[position:])
            break
        end = raw.find(escape, start + 1)
        if end < 0:
            out.append(raw[position:])
            break
        out.append(raw[position:start])
        out.append(
            _escape_value(raw[start + 1 : end], delimiters, raw[start : end + 1])
        )
        position = end + 1
    return _normalize_newlines("".join(out))


def _escape_value(sequence: str, delimiters: Delimiters, literal: str) -> str:
    simple = {
        "F": delimiters.field,
        "S": delimiters.component,
        "T": delimiters.subcomponent,
        "R": delimiters.repetition,
        "E": delimiters.escape,
        ".br": "\n",
        "H": "",
        "N": "",
    }
    if sequence in simple:
        return simple[sequence]
    if sequence[:1] == "X":
        return _hex_text(sequence[1:]) or literal
    if sequence[:1] in {"C", "M"}:
        return ""
    return literal


def _hex_text(digits: str) -> str:
    """Decode the hexadecimal data of an \\X..\\ escape.

    Single bytes (\\X0D\\) are characters of the message's 8-bit range. Four
    or more digits that do not form valid UTF-8 are read as UTF-16 code units,
    which is how senders write \\X00E9\\ for "é".
    """
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        return ""
    if not data:
        return ""
    if len(data) % 2 == 0 and len(data) >= 2:
        try:
            text = data.decode("utf-8")
            if "\x00" not in text:
                return text
        except UnicodeDecodeError:
            pass
        return data.decode("utf-16-be", errors="replace")
    return data.decode("latin-1")


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _strip_preamble(data: bytes) -> bytes:
    data = data.lstrip(b"\r\n\t \x00")
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :].lstrip(b"\r\n\t ")
    return data


def _check_starts_with_msh(data: bytes) -> None:
    if not data.startswith(b"MSH") or len(data) < 8:
        raise Hl7Error(
            "the message does not start with an MSH segment; send MSH first",
            code=CODE_SEGMENT_SEQUENCE_ERROR,
            location=ErrorLocation("MSH", 1),
            reject=True,
        )


def _read_delimiters(data: bytes) -> Delimiters:
    separator = data[3:4]
    if not _is_delimiter_byte(separator):
        raise Hl7Error(
            "MSH-1 (field separator) must be a printable character that is not "
            "a letter, digit or space; send MSH|^~\\&",
            code=CODE_DATA_TYPE_ERROR,
            location=ErrorLocation("MSH", 1, 1),
            reject=True,
        )
    end = len(data)
    for marker in (data.find(separator, 4), data.find(b"\r", 4), data.find(b"\n", 4)):
        if marker >= 0:
            end = min(end, marker)
    encoding = data[4:end]
    if not encoding:
        raise Hl7Error(
            "MSH-2 (encoding characters) is missing; send ^~\\& after the field "
            "separator",
            code=CODE_DATA_TYPE_ERROR,
            location=ErrorLocation("MSH", 1, 2),
            reject=True,
        )
    if not all(_is_delimiter_byte(encoding[i : i + 1]) for i in range(len(encoding))):
        raise Hl7Error(
            "MSH-2 (encoding characters) contains a letter, digit, space or "
            "non-ASCII byte; send ^~\\&",
            code=CODE_DATA_TYPE_ERROR,
            location=ErrorLocation("MSH", 1, 2),
            reject=True,
        )
    chars = encoding.decode("ascii")[:4]
    # NOTE: a three-character MSH-2 ending in "&" is read as ^~& with no escape
    # character, which is how senders that omit the escape write it.
    if len(chars) == 3 and chars[2] == "&":
        chars = chars[:2] + "\x00" + "&"
    padded = (chars + "\x00\x00\x00\x00")[:4]
    component, repetition, escape, subcomponent = (
        "" if c == "\x00" else c for c in padded
    )
    delimiters = Delimiters(
        field=separator.decode("ascii"),
        component=component,
        repetition=repetition,
        escape=escape,
        subcomponent=subcomponent,
    )
    given = [c for c in (delimiters.field, *padded) if c != "\x00"]
    if len(set(given)) != len(given):
        raise Hl7Error(
            "MSH-1 and MSH-2 repeat a delimiter; each of the five delimiters must "
            "be different",
            code=CODE_DATA_TYPE_ERROR,
            location=ErrorLocation("MSH", 1, 2),
            reject=True,
        )
    return delimiters


def _is_delimiter_byte(value: bytes) -> bool:
    return len(value) == 1 and 0x21 <= value[0] <= 0x7E and not value.isalnum()


def _split_segments(data: bytes, separator: bytes) -> list[bytes]:
    lines = [line for line in _LINE_BREAK.split(data) if line.strip()]
    if len(lines) == 1:
        lines = _split_unbroken(lines[0], separator)

    # A line that does not open with a segment id continues the previous
    # segment: a bare line break inside free text such as an NTE.
    segments: list[bytes] = []
    for line in lines:
        if segments and not _opens_segment(line, separator):
            if line.startswith(separator):
                raise Hl7Error(
                    f"segment {len(segments) + 1} has no segment id; every "
                    "segment must start with a three-character id such as OBX",
                    code=CODE_SEGMENT_SEQUENCE_ERROR,
                    location=ErrorLocation("", 0),
                )
            segments[-1] = segments[-1] + b"\n" + line
        else:
            segments.append(line)
    return segments


def _split_unbroken(line: bytes, separator: bytes) -> list[bytes]:
    """Split a message sent with spaces instead of segment terminators.

    The split happens before a known segment id (or a Z-segment id) that
    follows a space and is followed by the field separator.

    NOTE: a field whose text ends in a space and a segment id, such as
    "NOTE PID|", is split there too. Only messages without any line break
    take this path.
    """
    ids = "|".join(sorted(KNOWN_SEGMENT_IDS - {"MSH"}))
    pattern = re.compile(
        rb"\s+(?=(?:"
        + ids.encode("ascii")
        + rb"|Z[A-Z0-9]{2})"
        + re.escape(separator)
        + rb")"
    )
    return [part for part in pattern.split(line) if part.strip()]


def _opens_segment(line: bytes, separator: bytes) -> bool:
    if not _SEGMENT_START.match(line):
        return False
    return len(line) == 3 or line[3:4] == separator


def _codec_of(msh: bytes, delimiters: Delimiters) -> str:
    fields = msh.split(delimiters.field.encode("ascii"))
    # fields[0] is "MSH" and fields[1] is MSH-2, so MSH-18 is fields[17].
    raw = fields[17] if len(fields) > 17 else b""
    for separator in (delimiters.repetition, delimiters.component):
        if separator:
            raw = raw.split(separator.encode("ascii"))[0]
    name = raw.decode("ascii", errors="replace").strip().upper()
    codec = CHARACTER_SETS.get(name)
    if codec is None:
        raise Hl7Error(
            "MSH-18 names a character set this listener does not decode; send "
            "UNICODE UTF-8, ASCII or 8859/1 to 8859/9 or 8859/15",
            code=CODE_TABLE_VALUE_NOT_FOUND,
            location=ErrorLocation("MSH", 1, 18),
            reject=True,
        )
    return codec


def _decode_line(line: bytes, codec: str, index: int) -> str:
    try:
        text = line.decode(codec)
    except UnicodeDecodeError:
        raise Hl7Error(
            f"segment {index + 1} is not valid {codec}; set MSH-18 to the "
            "character set the message is written in",
            code=CODE_DATA_TYPE_ERROR,
            location=ErrorLocation(line[:3].decode("ascii", "replace"), 0),
            reject=index == 0,
        ) from None
    if _CONTROL_CHARACTERS.search(text):
        raise Hl7Error(
            f"segment {index + 1} contains control characters; escape binary "
            "data with \\X..\\ or send it as ED in base64",
            code=CODE_DATA_TYPE_ERROR,
            location=ErrorLocation(text[:3], 0),
            reject=index == 0,
        )
    return text


def _make_segment(
    text: str, segment_id: str, sequence: int, delimiters: Delimiters
) -> Segment:
    parts = text.split(delimiters.field)
    if segment_id == "MSH":
        # MSH-1 is the separator itself, so the split is one field short.
        parts = ["MSH", delimiters.field, *parts[1:]]
    return Segment(
        id=segment_id, sequence=sequence, fields=tuple(parts), delimiters=delimiters
    )
