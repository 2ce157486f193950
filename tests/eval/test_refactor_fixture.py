"""The method-layer refactor keeps behaviour: a fixed-seed testbed sweep (sampled, T=1; four methods including
particle filtering and budget guidance; two budgets; 20 problems) writes the same records as before it, byte for
byte once the wall-clock fields are dropped. The fixture was written by the code before the refactor, and
rewritten once since, by a deliberate fix (issue 17, commit "Forced tokens: count the first token of a forced
replacement"): the budget controller did not count the first forced token that replaces a sampled EOS, so 1 of
the 140 records (a particle-filter@8 particle that ended its turn while thinking) now has forced_tokens 3 (was
2) and one more completion and processed token; every other field of every record is unchanged. Rewritten a
second time by a deliberate change of the sampler (inverse-CDF draws instead of the exponential race, issue 19's
decode profile): with the old sampler patched back in, the code of that commit still writes all 140 records of
the previous fixture byte for byte (checked at 2 threads); with the new one, sampled tokens differ. Rewritten a third time for the testbed v2 checkpoints (issue 18): a
different target model (and the default d=6 set, regenerated for the new operand range) writes different
records; the code that wrote it is the merge of main into world-v2. Rewritten a fourth time for the testbed PRM's
prefix cache (each token read once, `rewards.segment_kv`): with the cache off that code still writes the previous
fixture byte for byte; with it on, the 40 particle-filter records change: `prm_tokens` in all (301380 -> 16110
in total), and the trajectory in about half, because the verifier reads in bfloat16 and a score from an
incremental read differs from a padded batch read by rounding (equal to 1e-5 in float32, see
`tests/search/test_segment_kv.py`). Particle filtering still answers 34 of its 40 right. Rewritten a fifth time
when scorers began forgetting their kept states at every run (`forget()`): the sweep's particle-filter@8 runs had
read the prefixes particle-filter@4 left in the shared PRM for free; now 20 records' `prm_tokens` are higher (16110
-> 19780 in total) and nothing else in any record changed (no trajectory, no answer).

The particle-filter records depend on how the CPU rounds the verifier's bfloat16 matmuls: they were written on an
AVX-512 CPU (oneDNN's native bf16 kernels). A CPU without AVX-512 runs plain `F.linear`, which rounds
differently (seen on an AVX2 EPYC: all 100 records of the other methods equal, the 40 particle-filter records
not), so those are run and compared only where bf16 matmuls are native (elsewhere they took 80% of the
test's time for nothing)."""

import gzip
import json
from pathlib import Path

from reasonbudget.eval import SweepConfig, run_sweep
from reasonbudget.models.registry import resolve_dtype

FIXTURE = Path(__file__).parent.parent / "fixtures" / "sweep_before_refactor.jsonl.gz"
WALL_CLOCK = {"wall_seconds", "predictor_seconds"}


def normalized(record: dict) -> str:
    r = dict(record, usage={k: v for k, v in record["usage"].items() if k not in WALL_CLOCK},
             trace={k: v for k, v in record["trace"].items() if k not in WALL_CLOCK})
    return json.dumps(r, sort_keys=True)


def _key(line: str) -> tuple:
    r = json.loads(line)
    return r["method"], r.get("budget"), r.get("seed"), r["problem_id"]


def test_the_sweep_writes_the_records_it_wrote_before_the_refactor(tmp_path):
    # where bf16 matmuls are not native, the particle-filter records cannot match (above): they are not run there
    exact_bf16 = resolve_dtype("auto") == "bfloat16"
    methods = ("plain", "budget-forcing", "budget-guidance", "particle-filter")
    cfg = SweepConfig(task="testbed:d=6", methods=methods if exact_bf16 else methods[:3], budgets=(4, 8), seeds=(0,),
                      limit=20, model="testbed-target", temperature=1.0, batch_size=10)
    run_sweep(cfg, tmp_path, progress=False)
    now = [normalized(json.loads(line)) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    with gzip.open(FIXTURE, "rt") as f:
        before = [line.rstrip("\n") for line in f]
    assert len(before) == 140
    before = [b for b in before if json.loads(b)["method"] in cfg.methods]
    assert len(now) == len(before) == (140 if exact_bf16 else 100)
    assert sorted(now, key=_key) == sorted(before, key=_key)
