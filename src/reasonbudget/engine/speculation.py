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

from reasonbudget.engine.controllers import KEEP, Action, Controller
from reasonbudget.engine.sampling import SamplingConfig, probabilities
from reasonbudget.engine.verify import beam_step


@dataclass
class RowSpeculation:
    """What speculation cost and saved for one row (read into `Usage`)."""

    drafted: int = 0
    accepted: int = 0
    draft_passes: int = 0
    draft_fed: int = 0
    """Tokens the draft read without sampling (catching up on tokens it did not draft)."""
    rounds: int = 0
    gamma: int = 0
    """This row's current draft length (adaptive speculation)."""
    draft_beam_tokens: int = 0
    """Tokens MTAD's beams fed beyond one row per drafted token (the draft's compute is drafted + these)."""
    position_drafted: list[int] = field(default_factory=list)
    position_accepted: list[int] = field(default_factory=list)
    """Per position k of a round's block: how often a k-th token was proposed, and kept."""

    def count_block(self, length: int) -> None:
        while len(self.position_drafted) < length:
            self.position_drafted.append(0)
            self.position_accepted.append(0)
        for k in range(length):
            self.position_drafted[k] += 1


class _RecordQ(Controller):
    """The draft's post-processed distribution at each step (what its tokens were drawn from); stops the draft
    row after `limit` tokens (its own gamma, when gamma adapts per row)."""

    def __init__(self, sampling: SamplingConfig, limit: int) -> None:
        self.sampling, self.limit, self.count = sampling, limit, 0
        self.q: list[Tensor] = []

    def process_logits(self, logits: Tensor, hidden: Mapping[int, Tensor] | None) -> Tensor:
        if not self.sampling.greedy:
            self.q.append(probabilities(logits[None], self.sampling)[0])
        return logits

    def on_token(self, token: int, forced: bool) -> Action:
        self.count += 1
        return Action(stop=True) if self.count >= self.limit else KEEP


def adapt_gamma(gamma: int, proposed: int, kept: int, ceiling: int) -> int:
    """HF assisted generation's heuristic: two more draft tokens after a round that kept them all, one fewer
    otherwise (at least 1, at most `ceiling`); pure."""
    if proposed and kept == proposed:
        return min(ceiling, gamma + 2)
    return max(1, gamma - 1)


@dataclass(frozen=True, kw_only=True)
class MTADSettings:
    """MTAD (Qin et al.; spec 4): the draft beam-samples W blocks of gamma tokens from q^ (its logits at
    `temperature`, top-k, top-p), the most likely block is verified, and the longest prefix whose joint ratio
    P/Q exceeds tau is kept, then one token from the target's distribution. Not lossless."""

    width: int = 4
    tau: float = 0.5
    temperature: float = 1.0
    top_k: int = 10
    top_p: float = 0.9
    replacement: bool = True

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"width={self.width}: must be >= 1 beam")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau={self.tau}: must be in (0, 1]")
        if self.temperature < 0:
            raise ValueError(f"draft temperature={self.temperature}: must be >= 0")

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)


@dataclass
class Speculation:
    """A draft engine and gamma (draft tokens per round) for one `Engine.decode` call; `mtad` switches the
    proposal to beam-sampled blocks and the rule to MTAD's joint-ratio test."""

    draft: object  # Engine (typed loosely: engine.py imports this module)
    gamma: int = 4
    mtad: MTADSettings | None = None
    adaptive: bool = False
    """Each row's gamma adapts after every round (`adapt_gamma`), between 1 and `max_gamma`."""
    max_gamma: int = 16
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
        beams = self.mtad.width if self.mtad is not None else 0
        self.draft.reserve(len(histories) * (1 + beams), longest + room)
        drafted = self.draft.prefill([tuple(h) for h in histories], max_new_tokens=room)
        self.rows = dict(zip(target_rows, drafted.tolist()))
        self.stats = {r: RowSpeculation(gamma=self.gamma) for r in target_rows}

    def record_round(self, target_row: int, proposed: int, kept: int) -> None:
        """After a row's round: adapt its gamma (when adaptive)."""
        if self.adaptive:
            s = self.stats[target_row]
            s.gamma = adapt_gamma(s.gamma, proposed, kept, self.max_gamma)

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
        if self.mtad is not None:
            return self._beam_blocks(target_rows, rows, generators)
        limits = [self.stats[r].gamma for r in target_rows]
        recorders = [_RecordQ(sampling, limit) for limit in limits]
        room = min(max(limits), min(d.cache.capacity - len(d.tokens(dr)) for dr in rows))
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

    def _beam_blocks(self, target_rows: Sequence[int], rows: Sequence[int],
                     generators: Sequence[Generator] | None) -> list[tuple[list[int], list[float]]]:
        """MTAD's draft (spec 4.2): per row, W beams as forked draft rows; at each depth every beam's q^ is
        computed, W (beam, token) pairs are drawn in proportion to exp(beam log Q + log q^) (the top W when the
        draft is greedy), and rows are re-indexed to their parents. Beam scores are normalised in log space
        (logsumexp), not by a log-softmax over probabilities (the reference's bug, spec 4.6). -> per row the
        block of the most likely beam and the draft's log q^ of each of its tokens."""
        m, d = self.mtad, self.draft
        width, cfg = m.width, m.sampling
        depth = min(self.gamma, min(d.cache.capacity - len(d.tokens(dr)) for dr in rows))
        if depth < 1:
            return [([], []) for _ in rows]
        # depth 0 runs on the rows themselves (the W beams would be equal); the beams fork after it, and the rows
        # take their last token back out of the cache until they take over their best beam
        own = torch.tensor(rows, dtype=torch.long)
        first = d.forward_last(own)
        try:
            beams = d.fork(own.repeat_interleave(width)).view(len(rows), width)  # [n, W]
        finally:
            d.rewind_last(own)
        score = [torch.zeros(width, dtype=torch.float64) for _ in rows]  # log Q of each beam's block so far
        blocks: list[list[list[int]]] = [[[] for _ in range(width)] for _ in rows]
        logqs: list[list[list[float]]] = [[[] for _ in range(width)] for _ in rows]
        try:
            for k in range(depth):
                logits = first if k == 0 else d.forward_last(beams.flatten())
                dist = probabilities(logits, cfg) if not cfg.greedy else torch.softmax(logits.float(), -1)
                logq = torch.log(dist).double().view(len(rows), 1 if k == 0 else width, -1)  # [n, W or 1, V]
                for i in range(len(rows)):
                    parent, tok, score[i] = beam_step(score[i][:1] if k == 0 else score[i], logq[i], width,
                                                      greedy=cfg.greedy,
                                                      replacement=m.replacement,
                                                      generator=generators[i] if generators else None)
                    d.reorder(beams[i], beams[i][parent])
                    for b, t in zip(beams[i].tolist(), tok):
                        d.history[b].append(t)
                    step = [float(logq[i, pa, t]) for pa, t in zip(parent, tok)]
                    blocks[i] = [blocks[i][pa] + [t] for pa, t in zip(parent, tok)]
                    logqs[i] = [logqs[i][pa] + [lq] for pa, lq in zip(parent, step)]
            # the row takes over its best beam's cache: the next round feeds the draft only the target's own tokens
            # (the bonus), not the kept block again (a multi-token forward that cost more than a beam step)
            best = [int(s.argmax()) for s in score]
            d.reorder(own, torch.stack([beams[i][b] for i, b in enumerate(best)]))
        finally:
            d.release(beams.flatten())
        out = []
        for i, r in enumerate(target_rows):
            st = self.stats[r]
            st.drafted += depth
            st.draft_beam_tokens += (depth - 1) * (width - 1)
            st.draft_passes += depth
            st.rounds += 1
            out.append((blocks[i][best[i]], logqs[i][best[i]]))
        return out
