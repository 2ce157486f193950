"""Step labels from outcomes (Math-Shepherd, Wang et al. 2024): how often the policy still reaches the gold
answer when it continues from the end of a step.

For each problem the policy samples `samples` solutions (end-of-sequence tokens dropped, as the step runner
drops them). Each solution is cut into steps by the step runner's rule (`step_boundaries`). From the ends of up
to `max_prefixes` steps (evenly spread, always the last-but-one), `rollouts - 1` fresh completions are
sampled; the solution's own continuation is one more completion from that prefix (it was sampled at the same
temperature), so each rolled-out step gets `rollouts` outcomes: its soft label is their share reaching the gold
answer, its hard label whether any did. The last step's outcome is the solution's own; the other steps stay
unlabelled. A prefix is prefilled once and forked into its rollout rows.

Work is written per problem to a JSONL file and skipped on a rerun, so a killed run resumes where it stopped;
every draw comes from a generator seeded by (seed, problem, solution, step, rollout), so a resumed run
writes what an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LabelConfig:
    samples: int = 2
    """Solutions sampled per problem."""
    rollouts: int = 4
    """Outcomes per intermediate step: the solution's own continuation and rollouts - 1 fresh ones."""
    temperature: float = 0.8
    max_tokens: int = 400
    """Per solution and per rollout (prefix included)."""
    max_prefixes: int = 6
    """At most this many step ends of a solution are rolled out (evenly spread; the others stay unlabelled)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("samples", "rollouts", "max_tokens", "max_prefixes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: labels need sampled rollouts (> 0)")


@dataclass(frozen=True)
class LabelledSolution:
    text: str
    steps: tuple[str, ...]
    correct: bool
    values: tuple[float | None, ...]
    """Per step: the share of outcomes from its end that reach the gold answer; None where not rolled out."""
    outcomes: tuple[int, ...]
    """Per step: how many outcomes `values` averages (0 where not rolled out)."""


@dataclass(frozen=True)
class LabelledProblem:
    problem_id: str
    question: str
    gold: str
    solutions: tuple[LabelledSolution, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(line: str) -> LabelledProblem:
        d = json.loads(line)
        sols = tuple(LabelledSolution(s["text"], tuple(s["steps"]), s["correct"], tuple(s["values"]),
                                      tuple(s["outcomes"])) for s in d["solutions"])
        return LabelledProblem(d["problem_id"], d["question"], d["gold"], sols)


def step_boundaries(pieces: Sequence[str], delimiter: str, close: str = "", max_step_tokens: int = 256) -> list[int]:
    """Token counts at which steps end, by the step runner's rule: after the token that completes a delimiter
    when an earlier token of the step had text, or after `max_step_tokens` tokens; once the text holds the
    end-of-thinking marker `close`, the rest is one step. The last step runs to the end. `pieces` are the
    tokens' texts; pure."""
    ends, current, text, closed = [], "", "", False
    for i, piece in enumerate(pieces):
        had_text = bool(current.strip())
        current += piece
        text += piece
        closed = closed or bool(close) and close in text
        if closed:
            continue
        if (current.endswith(delimiter) and had_text) or i + 1 - (ends[-1] if ends else 0) >= max_step_tokens:
            ends.append(i + 1)
            current = ""
    if current.strip() or not ends:
        ends.append(len(pieces))
    elif ends[-1] != len(pieces):  # trailing whitespace joins the last step
        ends[-1] = len(pieces)
    return ends


def spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), always including the last one; all of them if n <= k; pure."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]


def load_labels(path: Path) -> list[LabelledProblem]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(LabelledProblem.from_json(line))
            except (json.JSONDecodeError, KeyError):  # a line cut by a killed run: that problem is redone
                logger.warning("%s: skipping a damaged line", path)
    return out


class StepLabeller:
    """Labels problems on one engine (see the module docstring)."""

    def __init__(self, model, cfg: LabelConfig, *, task: str, batch_rows: int = 128) -> None:
        from reasonbudget.engine import Engine

        self.model, self.cfg, self.task, self.batch_rows = model, cfg, task, batch_rows
        self.engine = Engine(model)
        self.delimiter = model.profile.step_delimiter
        self.tokens_generated = 0
        self.outcomes: dict[tuple[str, int, int], list[bool]] = {}
        """(problem id, solution, step) -> every outcome of a rolled-out step in seed order: the solution's own,
        then rollout 0, 1, ... (rollout r draws the same tokens whatever `rollouts` is, so a label made with
        fewer rollouts is a prefix of this list)."""

    def _gen(self, *key: object) -> torch.Generator:
        from reasonbudget.eval.runner import problem_seed

        # "#"-joined, with "#" and "\\" escaped inside the parts, so that no two keys share a seed (ids without
        # either character keep the seeds they had)
        parts = (str(k).replace("\\", "\\\\").replace("#", "\\#") for k in key)
        return torch.Generator().manual_seed(problem_seed(self.cfg.seed, "#".join(parts)))

    def _decode(self, prefixes: Sequence[Sequence[int]], gens: Sequence[torch.Generator], max_new: Sequence[int]) -> list[list[int]]:
        """Sample a completion of each prefix (one row each), in chunks of batch_rows; identical prefixes are
        prefilled once and forked."""
        from reasonbudget.engine import SamplingConfig

        out: list[list[int]] = [[] for _ in prefixes]
        # rows of one budget together (a chunk decodes to its largest budget), then by prefix length
        order = sorted(range(len(prefixes)), key=lambda i: (-max_new[i], len(prefixes[i])))
        sampling = SamplingConfig(temperature=self.cfg.temperature)
        for c in range(0, len(order), self.batch_rows):
            idx = order[c : c + self.batch_rows]
            unique: dict[tuple[int, ...], list[int]] = {}
            for i in idx:
                unique.setdefault(tuple(prefixes[i]), []).append(i)
            keys = list(unique)
            budget = max(max_new[i] for i in idx)
            self.engine.reserve(len(idx), max(map(len, keys)) + budget)
            first = self.engine.prefill([list(k) for k in keys], max_new_tokens=budget)
            rows, which = [], []
            for r, k in zip(first.tolist(), keys):
                members = unique[k]
                copies = self.engine.fork(torch.tensor([r] * (len(members) - 1))).tolist() if len(members) > 1 else []
                rows += [r, *copies]
                which += members
            rows_t = torch.tensor(rows)
            try:
                decoded = self.engine.decode(rows_t, max_new_tokens=budget, sampling=sampling,
                                             generator=[gens[i] for i in which])
            finally:
                self.engine.release(rows_t)
            eos = self.model.eos_ids
            for i, d in zip(which, decoded):
                toks = [t for t in list(d.tokens)[: max_new[i]] if t not in eos]  # as the step runner drops them
                out[i] = toks
                self.tokens_generated += len(toks)
        return out

    def _text(self, tokens: Sequence[int]) -> str:
        return self.model.decode(list(tokens))

    def label(self, problems: Sequence) -> list[LabelledProblem]:
        """One `LabelledProblem` per problem (`Problem`s with id, question and gold)."""
        from reasonbudget.models.registry import build_prompt
        from reasonbudget.tasks.grading import grade_many

        cfg = self.cfg
        prompts = [list(build_prompt(self.model, p.question)) for p in problems]
        jobs = [(pi, s) for pi in range(len(problems)) for s in range(cfg.samples)]
        sols = self._decode([prompts[pi] for pi, _ in jobs], [self._gen(problems[pi].id, s) for pi, s in jobs],
                            [cfg.max_tokens] * len(jobs))
        texts = [self._text(t) for t in sols]
        correct = grade_many([(t, problems[pi].gold, self.task) for t, (pi, _) in zip(texts, jobs)])
        # step ends of every solution, and the prefixes to roll out
        ends = [step_boundaries([self._text([t]) for t in toks], self.delimiter, self.model.profile.think_close)
                for toks in sols]
        roll: list[tuple[int, int]] = []  # (job, step)
        for j, e in enumerate(ends):
            roll += [(j, k) for k in spread(len(e) - 1, cfg.max_prefixes)] if len(e) > 1 else []
        fresh = cfg.rollouts - 1
        prefixes, gens, budgets, owner = [], [], [], []
        for j, k in roll:
            pi, s = jobs[j]
            done = ends[j][k]
            for r in range(fresh):
                prefixes.append(prompts[pi] + sols[j][:done])
                gens.append(self._gen(problems[pi].id, s, k, r))
                budgets.append(max(1, cfg.max_tokens - done))
                owner.append((j, k))
        outcomes: dict[tuple[int, int], list[bool]] = {jk: [bool(correct[jk[0]])] for jk in roll}  # own first
        if prefixes:
            completions = self._decode(prefixes, gens, budgets)
            heads = {jk: self._text(sols[jk[0]][: ends[jk[0]][jk[1]]]) for jk in roll}
            verdicts = grade_many([(heads[o] + self._text(c), problems[jobs[o[0]][0]].gold, self.task)
                                   for o, c in zip(owner, completions)])
            for o, v in zip(owner, verdicts):
                outcomes[o].append(bool(v))
        for (j, k), v in outcomes.items():
            self.outcomes[(problems[jobs[j][0]].id, jobs[j][1], k)] = v
        wins = {jk: sum(v) for jk, v in outcomes.items()}
        out = []
        for pi, p in enumerate(problems):
            labelled = []
            for j in (j for j, (q, _) in enumerate(jobs) if q == pi):
                e, toks = ends[j], sols[j]
                steps = tuple(self._text(toks[a:b]).strip() for a, b in zip([0, *e[:-1]], e))
                values: list[float | None] = [None] * len(e)
                counts = [0] * len(e)
                for k in range(len(e) - 1):
                    if (j, k) in wins:
                        values[k], counts[k] = wins[(j, k)] / cfg.rollouts, cfg.rollouts
                values[-1], counts[-1] = float(correct[j]), 1
                labelled.append(LabelledSolution(texts[j], steps, bool(correct[j]), tuple(values), tuple(counts)))
            out.append(LabelledProblem(p.id, p.question, p.gold, tuple(labelled)))
        return out


def label_task(model, problems: Sequence, out: Path, cfg: LabelConfig, *, task: str, chunk: int = 32,
               batch_rows: int = 128,
               progress: bool = True, log: Callable[[str], None] | None = None) -> list[LabelledProblem]:
    """Label `problems` into the JSONL file `out`, skipping those already there. `chunk` problems are labelled
    together (their rollouts decoded `batch_rows` at a time): results depend on neither (but for the rounding of batched bfloat16 matmuls), only speed does."""
    from tqdm import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    settings = out.with_suffix(".settings.json")
    mine = {"model": model.name, "task": task, **asdict(cfg)}
    if settings.exists() and json.loads(settings.read_text()) != mine:
        raise ValueError(f"{out} holds labels made with other settings ({settings}); use another output file "
                         f"or the same settings: {json.loads(settings.read_text())}")
    settings.write_text(json.dumps(mine, indent=2))
    done = {lp.problem_id: lp for lp in load_labels(out)}
    todo = [p for p in problems if p.id not in done]
    labeller = StepLabeller(model, cfg, task=task, batch_rows=batch_rows)
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), unit="problem", desc="step labels",
               disable=not progress, dynamic_ncols=True)
    t0 = time.time()
    if out.exists() and out.stat().st_size and not out.read_bytes().endswith(b"\n"):
        with out.open("a") as f:  # a line cut by a killed run: the next record starts on a line of its own
            f.write("\n")
    with out.open("a") as f:
        for i in range(0, len(todo), chunk):
            batch = labeller.label(todo[i : i + chunk])
            for lp in batch:
                f.write(lp.to_json() + "\n")
                done[lp.problem_id] = lp
            f.flush()
            bar.update(len(batch))
            if log:
                log(f"{len(done)}/{len(problems)} problems, {labeller.tokens_generated} tokens in "
                    f"{time.time() - t0:.0f}s")
    bar.close()
    return [done[p.id] for p in problems if p.id in done]
