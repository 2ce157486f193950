"""Answer selection over many candidates: majority vote and PRM-weighted vote on *equivalent* answers.

Answers are grouped by the harness's own notion of equality (`tasks.grading`): numbers compare as numbers,
anything else through math-verify ("1/2" and "0.5", "\\frac{1}{2}" are one answer). A candidate with no
extractable answer votes for nothing. Ties go to the group seen first (generation order), as in
search-and-learn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from reasonbudget.tasks.extraction import extract_answer, normalize_number


def _as_number(text: str) -> float | None:
    try:
        return float(normalize_number(text))
    except ValueError:
        return None


def answer_groups(answers: Sequence[str], *, symbolic: bool = True) -> list[int | None]:
    """Group id per answer text (None: no answer found); equal ids = equivalent final answers."""
    from reasonbudget.tasks.grading import grade_many

    extracted = [extract_answer(a, numeric=False) for a in answers]
    keys: list[str] = []  # one representative per group
    out: list[int | None] = []
    for e in extracted:
        if e is None or not e.strip():
            out.append(None)
            continue
        e = e.strip()
        num = _as_number(e)
        hit = None
        for g, rep in enumerate(keys):
            rep_num = _as_number(rep)
            if num is not None and rep_num is not None:
                same = math.isclose(num, rep_num, rel_tol=1e-9, abs_tol=1e-9)
            elif e == rep:
                same = True
            elif symbolic and (num is None or rep_num is None):
                same = grade_many([("\\boxed{" + e + "}", rep, "math")])[0]
            else:
                same = False
            if same:
                hit = g
                break
        if hit is None:
            keys.append(e)
            hit = len(keys) - 1
        out.append(hit)
    return out


def vote(groups: Sequence[int | None], weights: Sequence[float] | None = None) -> int | None:
    """Index of a candidate from the group with the largest total weight (count when weights is None); the
    first candidate of that group. None when no candidate has an answer."""
    totals: dict[int, float] = {}
    first: dict[int, int] = {}
    for i, g in enumerate(groups):
        if g is None:
            continue
        w = 1.0 if weights is None else float(weights[i])
        if math.isnan(w):
            continue
        totals[g] = totals.get(g, 0.0) + w
        first.setdefault(g, i)
    if not totals:
        return None
    best = max(totals.values())
    winner = min((first[g] for g, t in totals.items() if t == best))
    return winner
