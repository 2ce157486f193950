"""Reasoning formats: where thinking starts and ends, and what text forces its end.

Thinking models (Qwen3, R1 distills, the testbed) think inside <think> ... </think>. Instruct models without
thinking tokens (SmolLM2, Qwen2.5-Instruct) are asked to reason and then write a line starting with
"Final answer:"; that marker plays the role of </think>, and the text after it is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

QWEN_FORCING = ("\n\nConsidering the limited time by the user, I have to give the solution "
                "based on the thinking directly now.\n</think>\n\n")


@dataclass(frozen=True, kw_only=True)
class ReasoningProfile:
    name: str
    think_open: str
    """Text prefilled after the chat template's generation prompt to open thinking ("" if none)."""
    think_close: str
    """Marker whose appearance ends thinking (a single token for thinking models, a phrase otherwise)."""
    forcing: str
    """Injected when the thinking budget runs out; it must contain `think_close`."""
    nothinking: str
    """Prefilled instead of thinking by NoThinking; it must end with `think_close` (+ whitespace)."""
    wait: str = "\nWait,"
    """Injected instead of the end of thinking while under the minimum budget (s1)."""
    step_delimiter: str = "\n\n"
    answer_stop: str | None = None
    """The answer ends at this text once it has content (instruct models answer on one line)."""
    system_prompt: str | None = None
    answer_tokens: int = 2048
    """Default cap on answer tokens (methods' `max_answer_tokens=none`): a thinking model's summary may put its
    \\boxed{} late and NoThinking's answer is the whole solution, so long enough that the end of turn (or the
    context) ends the answer, not this cap."""

    def cut_answer(self, text: str) -> str:
        """The answer in `text` as the engine ends it: at the first `answer_stop` once the answer holds a letter
        or digit (markdown around the marker, as in "**Final answer:**" then a newline, is not an answer yet)."""
        start = next((i for i, c in enumerate(text) if c.isalnum()), -1)
        end = text.find(self.answer_stop, start) if self.answer_stop and start >= 0 else -1
        return (text if end < 0 else text[:end]).strip()

    def __post_init__(self) -> None:
        if self.think_close not in self.forcing:
            raise ValueError(f"profile {self.name}: forcing string must contain think_close {self.think_close!r}")
        if self.think_close not in self.nothinking:
            raise ValueError(f"profile {self.name}: nothinking string must contain think_close")


THINKING = ReasoningProfile(
    name="thinking",
    think_open="<think>\n",
    think_close="</think>",
    forcing=QWEN_FORCING,
    nothinking="Okay, I think I have finished thinking.\n</think>\n\n",
)

INSTRUCT = ReasoningProfile(
    name="instruct",
    think_open="",
    think_close="Final answer:",
    forcing="\n\nFinal answer:",
    nothinking="Final answer:",
    answer_stop="\n",
    answer_tokens=1024,
    system_prompt=("You are a careful math tutor. Reason step by step, then write the result on a last line "
                   "that starts with 'Final answer:'."),
)

TESTBED = ReasoningProfile(
    name="testbed",
    think_open="<think>\n",
    think_close="</think>",
    forcing="\n</think>\n",
    nothinking="</think>\n",
    wait="\ncheck: ",
    step_delimiter="\n",
    answer_tokens=256,  # one answer line
)
"""The testbed's tiny thinking models: one reasoning step per line, no forcing sentence they never saw."""

PROFILES = {p.name: p for p in (THINKING, INSTRUCT, TESTBED)}
