"""Numbers written as words in a prompt, as digits: "two hundred and fifty metres" -> "250 metres".

`spell_out_numbers(text)` rewrites every run of English number words that makes one number ("twenty five",
"twenty-five", "one hundred and fifty", "a thousand", "two and a half", "a dozen") as that number's digits, and
every run that does not ("one or two", "two three") word by word. It also reads "1/4 mile" as 0.25 and a decimal
comma before a unit ("300,5 m") as a point. Only the last word of a compound had been read ("two hundred metre"
was 100 m, "five hundred feet" 30 m: a new user's findings); "seventy" and "a thousand" were not read at all.

The text is expected lower-cased, as `prompt_rules.normalise` hands it.
"""

from __future__ import annotations

import re

UNITS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
         "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
         "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "single": 1}  # (no "zero": "zero
#   trees" is a negation, which prompt_rules.py reads as such)
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
        "ninety": 90}
SCALES = {"hundred": 100, "thousand": 1000, "dozen": 12}

_WORD = "|".join(sorted(list(UNITS) + list(TENS) + list(SCALES), key=len, reverse=True))
# a run: optional "a"/"an" (before a scale), number words joined by spaces, hyphens or "and" (British "one hundred
# and fifty"), optionally "and a half"
_RUN = re.compile(rf"(?<![\w.-])(?:(?:an?)\s+(?=(?:hundred|thousand|dozen)\b))?(?:{_WORD})"
                  rf"(?:(?:\s*-\s*|\s+and\s+|\s+)(?:{_WORD}))*(?:\s+and\s+an?\s+half)?(?![\w])")
LENGTH_UNITS_RE = r"km|kilomet(?:re|er)s?|mi|miles?|ft|feet|foot|yd|yards?|m|met(?:re|er)s?"  # (prompt_rules.py's too)
_LENGTH_UNIT = rf"(?:{LENGTH_UNITS_RE})\b"


def _value(words: list[str]) -> float | None:
    """The number a run of number words makes, or None where they make no single number ("two three",
    "one and two": "and" joins only after a hundred or a thousand)."""
    total, current, last = 0, 0, None
    for word in words:
        if word in ("a", "an"):
            if last is not None:
                return None
            last = "a"
        elif word == "and":
            if last not in ("hundred", "thousand"):
                return None
            last = "and"
        elif word in UNITS:
            value = UNITS[word]
            if last in ("unit",) or (last == "tens" and value >= 10) or last == "dozen":
                return None
            current += value
            last = "unit"
        elif word in TENS:
            if last in ("unit", "tens", "dozen") or (last == "hundred" and current % 100):
                return None
            current += TENS[word]
            last = "tens"
        elif word == "hundred":
            if last in ("hundred", "dozen") or current >= 100:
                return None
            current = (current or 1) * 100
            last = "hundred"
        elif word == "thousand":
            if last in ("thousand", "dozen", "and"):
                return None
            total += (current or 1) * 1000
            current, last = 0, "thousand"
        elif word == "dozen":
            if last not in (None, "a", "unit"):
                return None
            current = (current or 1) * 12
            last = "dozen"
        else:
            return None
    if last in ("a", "and"):
        return None
    return float(total + current)


def _digits(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))


def _replace(match: re.Match) -> str:
    run = match.group(0)
    half = re.search(r"\s+and\s+an?\s+half$", run)
    body = run[:half.start()] if half else run
    words = [w for w in re.split(r"[\s-]+", body) if w]
    value = _value(words)
    if value is not None:
        return _digits(value + (0.5 if half else 0.0))
    # no single number: each word on its own ("one or two storeys" never gets here: "or" ends the run)
    out = []
    for word in words:
        number = UNITS.get(word, TENS.get(word, SCALES.get(word)))
        out.append(word if number is None or word in ("a", "an", "and") else str(number))
    return " ".join(out) + (" and a half" if half else "")


def spell_out_numbers(text: str) -> str:
    """`text` (lower-case) with its spelled numbers as digits (see the module docstring)."""
    text = _RUN.sub(_replace, text)
    # "1/4 mile", "3/4 km": a fraction before a unit
    text = re.sub(rf"\b(\d+)\s*/\s*(\d+)(?=\s*-?\s*{_LENGTH_UNIT})",
                  lambda m: _digits(int(m.group(1)) / int(m.group(2))) if int(m.group(2)) else m.group(0), text)
    # "300,5 m": a decimal comma before a unit ("1,200 m", three digits after it, is a thousands separator)
    return re.sub(rf"\b(\d+),(\d{{1,2}})(?=\s*-?\s*{_LENGTH_UNIT})", r"\1.\2", text)


__all__ = ["spell_out_numbers", "LENGTH_UNITS_RE"]
