"""The testbed's character tokenizer: printable ASCII and newline, plus five special tokens, with a chat
template, as an HF `PreTrainedTokenizerFast` (saved and loaded like any HF tokenizer)."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

END, THINK, END_THINK, USER, ASSISTANT = "<|end|>", "<think>", "</think>", "<|user|>", "<|assistant|>"
SPECIAL = [END, THINK, END_THINK, USER, ASSISTANT]
CHARS = [chr(i) for i in range(32, 127)] + ["\n"]

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|end|>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIAL + CHARS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=" "))
    specials = "|".join(s.replace("|", "\\|") for s in SPECIAL)
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(f"{specials}|[\\s\\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=END, pad_token=END)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    tok.chat_template = CHAT_TEMPLATE
    return tok
