"""Final-answer extraction from model output: pure string functions.

Priority: the last \\boxed{...} (nested braces matched), then "Final answer:" / "The answer is", then, for
numeric tasks, the last number in the text.
"""

from __future__ import annotations

import re

_ANSWER_LINE = re.compile(r"(?:final answer|the answer is|answer)\s*(?:is)?\s*[:=]?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, with nested braces; None if absent or unclosed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        rest = text[start + len("\\boxed") :].lstrip()  # "\boxed 5" form
        return rest.split("$")[0].strip() or None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def answer_phrase(text: str) -> str | None:
    """The rest of the line after the last "final answer:" / "the answer is"."""
    matches = list(_ANSWER_LINE.finditer(text))
    if not matches:
        return None
    ans = matches[-1].group(1).split("\n")[0].strip()
    ans = re.sub(r"[.\s]+$", "", ans)  # trailing full stop
    return ans or None


def last_number(text: str) -> str | None:
    """The last number (commas as thousands separators allowed, decimals, simple fractions)."""
    found = _NUMBER.findall(text)
    return found[-1].rstrip(",") if found else None


def extract_answer(text: str, *, numeric: bool) -> str | None:
    """The final answer in `text`; numeric tasks reduce it to a number where they can."""
    if not isinstance(text, str) or not text.strip():
        return None
    candidate = last_boxed(text) or answer_phrase(text)
    if numeric:
        return last_number(candidate if candidate is not None else text)
    return candidate


def normalize_number(s: str) -> str:
    """'1,000' -> '1000', '025' -> '25', '$18' -> '18'."""
    s = s.replace(",", "").replace("$", "").strip()
    if re.fullmatch(r"-?\d+", s):
        return str(int(s))
    return s
