"""TALE's pure text layer: budget and estimation prompts, estimate parsing with its failure case, and the
optimal-budget search (halving with the cost condition, token elasticity, optional bisection)."""

import pytest

from reasonbudget.methods.budget.tale_text import budget_prompt, estimate_prompt, parse_estimate, search_budget


def test_budget_prompt_rewrites_the_trigger():
    ours = "ours"
    assert budget_prompt("How many apples?  ", 50, ours) == "How many apples?\nLet's think step by step and use less than 50 tokens:"
    assert budget_prompt("How many apples?", None, ours) == "How many apples?\nLet's think step by step:"
    assert 'Question: "How many apples?"' in estimate_prompt(" How many apples? ", ours)
    assert "[[budget]]" in estimate_prompt("q", ours)


def test_reference_layout_is_the_default():
    """The reference code's GSM8K layout: "Q: {question}", the [[answer]] format instruction, the trigger on its
    own line (ending in a newline); the estimation instruction word for word."""
    assert budget_prompt(" How many apples? ", 50) == (
        "Q: How many apples?\n"
        "Please Give the response by strictly following this format: [[answer]],for example: Answer: [[50]].\n"
        "Let's think step by step and use less than 50 tokens:\n")
    assert budget_prompt("How many apples?", None).endswith("\nLet's think step by step:\n")
    ask = estimate_prompt("How many apples?")
    assert ask.startswith("Task: Analyze the given question and estimate the minimum number of tokens required to "
                          "generate a complete and accurate response. Please Give the response by strictly "
                          "following this format: [[budget]],for example: Budget: [[12]].\n\nBelow is the question:")
    assert ask.endswith('Question: "How many apples?"')
    assert estimate_prompt("q") != estimate_prompt("q", "ours")
    with pytest.raises(ValueError, match="accepted are reference, ours"):
        budget_prompt("q", 5, "mine")


@pytest.mark.parametrize("text,expected", [
    ("Budget: [[120]]", 120),
    ("I think [[ 45 ]] tokens, maybe [[90]]", 45),  # the first one, as the reference parses
    ("[[0]]", 1),                                   # clamped to the minimum
    ("Budget: 120", None),                          # no [[n]]: the reference's -1
    ("[[-5]]", None),
    ("", None),
])
def test_parse_estimate(text, expected):
    assert parse_estimate(text) == expected


def test_parse_estimate_clamps_to_a_maximum():
    assert parse_estimate("[[100000]]", maximum=4096) == 4096


def model_with_threshold(threshold, elastic_below=None):
    """Correct when budget >= threshold; writes about the budget, but far more below `elastic_below`."""
    def solve(budget):
        tokens = 3 * budget if elastic_below is not None and budget < elastic_below else budget
        return budget >= threshold, tokens
    return solve


def test_halving_stops_at_the_first_failure():
    result = search_budget(model_with_threshold(30), vanilla_tokens=200)
    assert result.budget == 50 and [a.budget for a in result.attempts] == [100, 50, 25]


def test_cost_condition_stops_before_token_elasticity():
    solve = model_with_threshold(1, elastic_below=40)
    assert search_budget(solve, vanilla_tokens=160).budget == 40  # 20 is correct but its answer is longer
    assert search_budget(solve, vanilla_tokens=160, require_shorter=False).budget == 1


def test_bisection_finds_the_smallest_feasible_budget():
    result = search_budget(model_with_threshold(30), vanilla_tokens=200, binary=True)
    assert result.budget == 30 and result.tokens == 30


def test_nothing_smaller_works_keeps_the_vanilla_length():
    result = search_budget(model_with_threshold(10**6), vanilla_tokens=64)
    assert (result.budget, result.tokens, len(result.attempts)) == (64, 64, 1)
    with pytest.raises(ValueError, match="vanilla_tokens"):
        search_budget(model_with_threshold(1), vanilla_tokens=0)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("threshold,vanilla", [(30, 200), (1, 64), (500, 64), (7, 9)])
def test_lockstep_search_matches_the_sequential_one(threshold, vanilla, binary):
    """BudgetSearch driven by hand (as the batched driver does) retraces search_budget exactly."""
    from reasonbudget.methods.budget.tale_text import BudgetSearch

    solve = model_with_threshold(threshold)
    search = BudgetSearch(vanilla, binary=binary)
    while (b := search.proposal) is not None:
        search.record(*solve(b))
    assert search.result() == search_budget(solve, vanilla, binary=binary)
    assert search.result().vanilla_tokens == vanilla
    with pytest.raises(RuntimeError, match="finished"):
        search.record(True, 1)
