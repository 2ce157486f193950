"""PRMs by name, as methods take them (`prm=...` in a method spec):

    auto     the testbed's trained PRM for testbed models; else the policy model's trained PRM head when it has
             one (`reasonbudget train-prm`: the user cache, then its registry companion); else `logprob-min`
             (measured better than the judge; a remote policy whose model is not available here: the judge)
    testbed  the trained testbed PRM (verifier LM + step head) committed with the package
    oracle   the testbed's exact step checker (`prm_noise` flips labels: a noisy verifier; `prm_calibrated`
             scores the posterior 1 - prm_noise or prm_noise instead of the flipped 0/1 label)
    judge    LLM-as-judge: the policy model judges its own partial solutions on their KV rows (cheap)
    judge-text  LLM-as-judge with a fresh prompt per prefix (re-reads the whole prefix); the policy model, or
             the model named by `judge_model` (any registry name or path: a bigger model can judge a smaller one)
    logprob  the policy's own confidence: exp(mean token log-probability of the trace so far) (`rewards.logprob`;
             for a remote policy, the model it serves is loaded here when the registry has it)
    logprob-min  the same, by the lowest token log-probability so far
    pool:URL#MODEL  a Qwen2.5-Math-PRM-protocol PRM served by vLLM's pooling runner (`rewards.pooling`)
    PATH     a PRM head directory (`prm_head.json`: a head over a frozen base model, `rewards.head_prm`)
    PATH|ID  a Hugging Face PRM with the Qwen2.5-Math-PRM protocol (local directory or hub id)

The policy may be a local model or a remote one (`remote:URL#MODEL`); a remote policy has no KV rows here, so
`judge` and `judge-text` ask the served model with a one-token completion and its top log-probabilities
(`remote.judge`), unless `judge_model` names a local judge.

Loaded PRMs are kept on their policy: a sweep builds its method once per unit, the PRM only once, and a PRM (with
any model it loaded) goes when its policy does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

NAMES = ("auto", "testbed", "oracle", "judge", "judge-text", "logprob", "logprob-min")


def testbed_prm_dir(policy) -> Path:
    """The policy's companion PRM (registry), else the committed testbed PRM (a testbed checkpoint by path)."""
    from reasonbudget.models.registry import registered_companion, testbed_checkpoints

    return registered_companion(policy.name, "prm") or testbed_checkpoints() / "prm"


def head_prm_dir(policy) -> Path | None:
    """The trained PRM head of the policy's model (a remote policy: of the model it serves), if there is one."""
    from reasonbudget.models.registry import companion_dir
    from reasonbudget.rewards.head_prm import HEAD_CONFIG

    where = companion_dir(getattr(policy, "served_model", policy.name), "prm")
    return where if (where / HEAD_CONFIG).exists() else None


def load_prm(name: str, policy, *, noise: float = 0.0, calibrated: bool = False, seed: int | Mapping[str, int] = 0,
             judge_model: str = ""):
    """The PRM called `name` for a policy `LoadedModel` (see the module docstring)."""
    if name == "auto":
        head = head_prm_dir(policy) if policy.profile.name != "testbed" else None
        if head is not None and not _base_available(head):
            head = None
        name = "testbed" if policy.profile.name == "testbed" else str(head) if head else _no_head_default(policy)
    if noise and name != "oracle":
        raise ValueError(f"prm_noise is only for the oracle PRM (prm={name!r})")
    if calibrated and not noise:
        raise ValueError("prm_calibrated is only for a noisy oracle PRM (prm=oracle with prm_noise > 0)")
    if judge_model and name != "judge-text":
        raise ValueError(f"judge_model is only for prm=judge-text (prm={name!r}; prm=judge reads the policy's "
                         "own KV rows, so the policy judges)")
    if name in ("testbed", "oracle") and policy.profile.name != "testbed":
        raise ValueError(f"prm={name!r} scores testbed problems only; {policy.name} is not a testbed model "
                         "(use prm=judge or a PRM directory)")
    if isinstance(seed, Mapping):  # per-problem noise seeds: a fresh (cheap) oracle for this run, not cached
        return _build(name, policy, noise, calibrated, seed, judge_model)
    loaded = loaded_prms(policy)
    key = (name, noise, calibrated, seed, judge_model)
    if key not in loaded:
        loaded[key] = _build(name, policy, noise, calibrated, seed, judge_model)
    return loaded[key]


def loaded_prms(policy) -> dict[tuple, object]:
    """The PRMs built for this policy, kept on the policy object itself. A process-wide cache keyed by
    `id(policy)` kept every policy a process ever loaded (a PRM often holds its policy), and could hand a freed
    policy's PRM to a new policy born at the same address; here the two live and go together."""
    return vars(policy).setdefault("_loaded_prms", {})


def _base_available(head: Path) -> bool:
    """Is the model a PRM head reads installed here? (`prm=auto` passes over a head whose base is missing, with a
    warning, instead of failing: the 0.5B's head reads the 1.5B, which a user may not have fetched.)"""
    import logging

    from reasonbudget.models.registry import ModelNotFoundError, resolve
    from reasonbudget.rewards.head_prm import HeadSpec

    base = HeadSpec.load(head).base
    try:
        resolve(base)
        return True
    except ModelNotFoundError:
        logging.getLogger(__name__).warning("prm=auto: the PRM head in %s reads %s, which is not installed here "
                                            "(`make real-models` fetches it); using the fallback scorer", head, base)
        return False


def _no_head_default(policy) -> str:
    """`prm=auto` for a model without a trained PRM: the policy's lowest token probability so far. Measured on
    128 held-out GSM8K-test solutions of Qwen2.5-Coder-0.5B (step labels from rollouts): step AUROC 0.58 against
    0.55 for the mean log-probability; the self-judge's final-answer AUROC was 0.50, chance. A remote policy
    whose served model cannot be loaded here falls back to the judge (asked on the server)."""
    from reasonbudget.models.registry import ModelNotFoundError, resolve

    if hasattr(policy, "backend"):
        return "logprob-min"
    try:
        resolve(policy.served_model)
        return "logprob-min"
    except ModelNotFoundError:  # the served model is not available here: the server judges
        return "judge"


def _judge(policy, judge_model: str):
    """The judging model: the policy, or `judge_model` loaded in the policy's dtype."""
    if not judge_model:
        return policy
    from reasonbudget.models.registry import DTYPES, load_model

    if not hasattr(policy, "backend"):  # a remote policy: the judge runs here in float32
        return load_model(judge_model)
    dtype = next(n for n, d in DTYPES.items() if d == next(policy.backend.parameters()).dtype)
    return load_model(judge_model, dtype=dtype)


def _build(name: str, policy, noise: float, calibrated: bool, seed: int, judge_model: str):
    if name == "oracle":
        from reasonbudget.rewards.oracle import OraclePRM

        return OraclePRM(noise=noise, seed=seed, calibrated=calibrated)
    if name == "testbed":
        from reasonbudget.rewards.testbed_prm import TestbedPRM

        return TestbedPRM(testbed_prm_dir(policy))
    if name in ("judge", "judge-text") and not judge_model and hasattr(policy, "judge"):
        return policy.judge()  # a remote policy: the served model judges (no KV rows to peek here)
    if name == "judge":
        from reasonbudget.rewards.judge import SelfJudge

        return SelfJudge(policy)
    if name == "judge-text":
        from reasonbudget.rewards.judge import LLMJudge

        return LLMJudge(_judge(policy, judge_model))
    if name in ("logprob", "logprob-min"):
        from reasonbudget.models.registry import load_model
        from reasonbudget.rewards.logprob import PolicyLogProb

        model = policy if hasattr(policy, "backend") else load_model(policy.served_model, dtype="auto")
        return PolicyLogProb(model, "min" if name == "logprob-min" else "mean")
    if name.startswith("pool:"):
        from reasonbudget.rewards.pooling import PooledPRM

        return PooledPRM(name)
    path = Path(name).expanduser()
    from reasonbudget.rewards.head_prm import HEAD_CONFIG

    if (path / HEAD_CONFIG).exists():
        from reasonbudget.rewards.head_prm import HeadPRM, HeadSpec

        spec = HeadSpec.load(path)
        same = spec.base == policy.name and hasattr(policy, "backend")
        # the policy's own weights, when it is the base; then also its own rows, when the head reads states only
        return HeadPRM(path, base=policy if same else None, rows=same and spec.reads_rows)
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise ValueError(f"prm={name!r}: not a directory; accepted are {', '.join(NAMES)}, a local PRM "
                         "directory or a hub id such as Qwen/Qwen2.5-Math-PRM-7B")
    from reasonbudget.rewards.hf_prm import HFProcessRewardModel

    try:
        return HFProcessRewardModel(path if path.exists() else name)
    except OSError as e:
        raise ValueError(f"prm={name!r} could not be loaded ({type(e).__name__}): {e}") from None
