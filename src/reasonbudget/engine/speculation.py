"""Token-level speculation for the engine's decode loop (`../shared/specs/speculative.md` 1).

`Speculation` holds the draft: its own engine and rows. In each round of `Engine.decode` the draft writes up
to gamma tokens for every row that would sample (rows with forced tokens pending emit those as usual), the
target scores them all in one forward, and the decode loop walks each row's positions in order: controllers
see the logits and every emitted token as without speculation, the verification rule (`engine.verify`)
keeps a drafted token or emits the target's own, and the row's run of the round ends at the first token that
is not a kept draft (a correction, the bonus, a forced token, a stop). So a budget controller cuts the accepted
run at the budget: thinking never exceeds it under speculation either.

The draft's rows are synced to the target's text before each round (cut back to the shared prefix, the rest
fed without sampling), so forced tokens and rollbacks need no special handling. The draft samples from its
own post-processed distribution q (same sampling settings, no controllers); exactness needs only q(x) > 0 for
the tokens it drafts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Generator, Tensor

from reasonbudget.engine.controllers import Controller
from reasonbudget.engine.sampling import SamplingConfig, probabilities


@dataclass
class RowSpeculation:
    """What speculation cost and saved for one row (read into `Usage`)."""

    drafted: int = 0
    accepted: int = 0
    draft_passes: int = 0
    draft_fed: int = 0
    """Tokens the draft read without sampling (catching up on tokens it did not draft)."""
    rounds: int = 0


class _RecordQ(Controller):
    """The draft's post-processed distribution at each step (what its tokens were drawn from)."""

    def __init__(self, sampling: SamplingConfig) -> None:
        self.sampling = sampling
        self.q: list[Tensor] = []

    def process_logits(self, logits: Tensor, hidden: Mapping[int, Tensor] | None) -> Tensor:
        if not self.sampling.greedy:
            self.q.append(probabilities(logits[None], self.sampling)[0])
        return logits


@dataclass
class Speculation:
    """A draft engine and gamma (draft tokens per round) for one `Engine.decode` call."""

    draft: object  # Engine (typed loosely: engine.py imports this module)
    gamma: int = 4
    rows: dict[int, int] = field(default_factory=dict)
    """Target row -> draft row."""
    stats: dict[int, RowSpeculation] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gamma < 1:
            raise ValueError(f"gamma={self.gamma}: must be >= 1 draft token per round")

    def start(self, target_rows: Sequence[int], histories: Sequence[Sequence[int]], room: int) -> None:
        """Draft rows holding the same text as the target rows, with `room` tokens to grow (and gamma more, as
        far as the draft's context allows: near its end the draft proposes fewer tokens)."""
        longest = max(len(h) for h in histories)
        room = max(1, min(room + self.gamma, self.draft.model.context_length - longest))
        drafted = self.draft.prefill([tuple(h) for h in histories], max_new_tokens=room)
        self.rows = dict(zip(target_rows, drafted.tolist()))
        self.stats = {r: RowSpeculation() for r in target_rows}

    def close(self) -> None:
        if self.rows:
            self.draft.release(torch.tensor(list(self.rows.values()), dtype=torch.long))
            self.rows = {}

    def propose(self, target_rows: Sequence[int], histories: Sequence[Sequence[int]], sampling: SamplingConfig,
                generators: Sequence[Generator] | None) -> list[tuple[list[int], list[Tensor]]]:
        """Sync each draft row to its target row's text, then draft up to gamma tokens for all of them in one
        batched decode. -> per row (drafted tokens, the draft's distributions for them; empty when greedy)."""
        if not target_rows:
            return []
        d = self.draft
        rows = [self.rows[r] for r in target_rows]
        behind_rows, rests = [], []
        for r, dr, h in zip(target_rows, rows, histories):
            have = d.tokens(dr)
            common = 0
            for a, b in zip(have, h):
                if a != b:
                    break
                common += 1
            if common < len(have):  # its draft was not (all) kept: back to the shared text
                d.truncate(torch.tensor([dr]), torch.tensor([common]))
            if len(h) > common:  # the target's correction, bonus or forced tokens
                behind_rows.append(dr)
                rests.append(tuple(h[common:]))
                self.stats[r].draft_fed += len(h) - common
        if behind_rows:
            d.append(torch.tensor(behind_rows, dtype=torch.long), rests)
            for r, dr in zip(target_rows, rows):
                if dr in behind_rows:
                    self.stats[r].draft_passes += 1
        recorders = [_RecordQ(sampling) for _ in rows]
        room = min(self.gamma, min(d.cache.capacity - len(d.tokens(dr)) for dr in rows))
        if room < 1:
            return [([], []) for _ in rows]
        decoded = d.decode(torch.tensor(rows, dtype=torch.long), max_new_tokens=room, sampling=sampling,
                           generator=generators, controllers=recorders, stop_on_eos=True)
        out = []
        for r, dec, rec in zip(target_rows, decoded, recorders):
            s = self.stats[r]
            s.drafted += len(dec.tokens)
            s.draft_passes += dec.forward_passes
            s.rounds += 1
            out.append((list(dec.tokens), rec.q))
        return out
