"""Normalize personal names so that spelling variants compare equal.

Arabic: the alef forms with hamza or madda (أ إ آ) and alef wasla (ٱ) become
a bare alef (ا), taa marbuta (ة) becomes haa (ه), alef maqsura (ى) becomes
yaa (ي), and tashkeel (harakat, shadda, sukun, tanwin, dagger alef) and
tatweel are removed. Latin: the text is casefolded and accents are stripped
after NFKD decomposition, so "Ordóñez" and "ORDONEZ" compare equal.
"""

from __future__ import annotations

import re
import unicodedata

_ARABIC_FOLDING = str.maketrans(
    {
        "\u0623": "\u0627",  # أ alef with hamza above
        "\u0625": "\u0627",  # إ alef with hamza below
        "\u0622": "\u0627",  # آ alef with madda above
        "\u0671": "\u0627",  # ٱ alef wasla
        "\u0629": "\u0647",  # ة taa marbuta -> ه haa
        "\u0649": "\u064a",  # ى alef maqsura -> ي yaa
        "\u0640": None,  # tatweel (kashida)
    }
)

#: Arabic tashkeel: fathatan through sukun, superscript (dagger) alef, and the
#: Quranic annotation marks.
_ARABIC_DIACRITICS = re.compile("[\u064b-\u065f\u0670\u06d6-\u06ed]")

_WORD = re.compile(r"\w+")


def normalize_name(text: str) -> str:
    """Return ``text`` folded for comparison, words joined by single spaces."""
    folded = _ARABIC_DIACRITICS.sub("", text.translate(_ARABIC_FOLDING))
    decomposed = unicodedata.normalize("NFKD", folded)
    # Combining marks after NFKD are Latin accents and any Arabic marks that
    # survived; Arabic letters themselves are not combining.
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(_WORD.findall(stripped.casefold()))


def name_tokens(text: str) -> list[str]:
    """Split ``text`` into normalized words."""
    return normalize_name(text).split()
