"""A text end-of-turn judge: the chat LLM's own probability that the user's turn ends here.

The idea behind LiveKit's SmolLM-based turn detector, with the GGUF model Inzwa already runs
(not fine-tuned for it): the conversation is written with the GGUF's chat template up to and
including the user's words, WITHOUT closing the user turn, and one prefill gives the
distribution of the next token. A model that has read many finished chat turns puts mass on the
template's end-of-user-turn token (`<|im_end|>` for ChatML) after "what time is it" and almost
none after "I want to go to the".

Two choices (a probe of the pause set's texts; figures in README "Turn-taking",
`python -m bench.turn_end_llm`):
- the transcript is normalised as LiveKit does (lower case, no punctuation): Whisper's
  punctuation at a pause is a guess of its own (it writes "My favourite food is." as often as
  "..."), and the text guard already reads it; the judge should read the words. Unnormalised,
  whole statements ending in "." scored P(end) 0.002-0.05 ("I want to go to the market."),
  inside the fragments' range;
- so the score is P(end token) + P(a sentence-final mark "." "?" "!"): with the punctuation
  stripped, the model says "this sentence is over" by writing the mark first (P(end token)
  alone was <= 0.02 after every normalised text, whole or cut). The mark's mass separates the
  two (pause set: whole sentences 0.09-0.77, the cut ones <= 0.025); P(end | words + mark)
  would cost a second prefill and varies 0.001-0.9 (the model often writes a second sentence).

Cost: the system prompt's tokens stay in the KV cache (the longest common token prefix with the
previous call is kept, so a later pause of the same utterance re-reads only its new words); a
call is a prefill of the user's few words, logits of the last position only.
"""

from __future__ import annotations

import math
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from common.languages import registry as packs
from common.models import loaded_model_info, resolve
from common.settings import Settings

_SENTINEL = "\x00INZWA_USER_WORDS\x00"
_FINAL_MARKS = frozenset({".", "?", "!"})
# Whether the turn ends shows in its last words; a bound keeps a long monologue inside the
# 512-token context (and the prefill short). 30 s of speech is ~90 words.
MAX_WORDS = 60
# Languages where the default model's verdict was measured useful. SmolLM2-135M reads almost no
# Shona (its fragments and whole sentences score alike), so Shona keeps the silence timeout.
LANGUAGES = frozenset({"en"})


def normalize(text: str) -> str:
    """The words only, as a speech transcript without Whisper's punctuation guesses."""
    words = re.sub(r"[^\w\s']", " ", text.lower())
    return re.sub(r"\s+", " ", words).strip()


def split_template(template: str, system: str) -> tuple[str, str]:
    """(the prompt up to the user's words, what the template writes right after them)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=template, bos_token="", eos_token="",
                                    add_generation_prompt=False)
    messages: list[Any] = [{"role": "user", "content": _SENTINEL}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    prompt = formatter(messages=messages).prompt
    head, _, tail = prompt.partition(_SENTINEL)
    return head, tail


class LlmTurnEnd:
    def __init__(self, llama: Any, *, path: Path | None = None, model_name: str = "",
                 languages: frozenset[str] = LANGUAGES, midpoint: float = 0.5) -> None:
        self._llama = llama
        # The raw P(end) is small even after a whole request (0.09-0.77 on the pause set,
        # fragments <= 0.025), so it is raised to the power that maps `midpoint` to 0.5:
        # monotone, and INZWA_TURN_END_THRESHOLD keeps one meaning across engines.
        self._power = math.log(0.5) / math.log(midpoint)
        self._lock = threading.Lock()  # one context: sessions of several clients take turns
        self._path = path
        self._name = model_name or (path.name if path else "gguf")
        self.languages = languages
        self._template = str(llama.metadata["tokenizer.chat_template"])
        self._prefixes: dict[str, tuple[list[int], int]] = {}
        self._marks = [t for t in range(llama.n_vocab())
                       if llama.detokenize([t]).decode("utf-8", "ignore").strip() in _FINAL_MARKS]

    @classmethod
    def load(cls, model_path: Path, *, threads: int = 1, model_name: str = "",
             languages: frozenset[str] = LANGUAGES, midpoint: float = 0.5) -> LlmTurnEnd:
        from llama_cpp import Llama

        # A short context (system prompt + one utterance's words) keeps the KV cache small;
        # logits of the last position only: one row, not one per prompt token.
        llama = Llama(model_path=str(model_path), n_ctx=512, n_batch=512, n_threads=threads,
                      n_threads_batch=threads, logits_all=False, verbose=False)
        return cls(llama, path=Path(model_path), model_name=model_name, languages=languages,
                   midpoint=midpoint)

    def info(self) -> dict[str, str]:
        if self._path is None:
            return {"name": self._name, "version": "", "sha256": "", "engine": "llm"}
        return loaded_model_info(self._name, self._path, engine="llm", device="cpu")

    def supports(self, language: str) -> bool:
        return language in self.languages

    def probability(self, audio: np.ndarray, text: str, language: str) -> float:
        """P(end of the user's turn) after the transcript's words (raised to the calibration
        power; `midpoint` 0.5 gives the raw probability); the audio is not used."""
        words = " ".join(normalize(text).split()[-MAX_WORDS:])
        if not words:
            return 0.0
        with self._lock:
            head, end_token = self._prefix(language)
            # The words as the template would write them: right after the prefix's "user\n".
            tokens = head + self._llama.tokenize(words.encode(), add_bos=False, special=False)
            probs = self._next_token_probs(tokens)
        return float(min(1.0, probs[end_token] + probs[self._marks].sum()) ** self._power)

    def _prefix(self, language: str) -> tuple[list[int], int]:
        """The tokens before the user's words (with the pack's system prompt: the context the
        chat model sees in the conversation) and the token that closes the user's turn."""
        cached = self._prefixes.get(language)
        if cached is None:
            head, tail = split_template(self._template, _system_prompt(language))
            tokenize = self._llama.tokenize
            cached = (tokenize(head.encode(), add_bos=False, special=True),
                      tokenize(tail.encode(), add_bos=False, special=True)[0])
            self._prefixes[language] = cached
        return cached

    def _next_token_probs(self, tokens: list[int]) -> np.ndarray:
        """Softmax of the logits after `tokens`, evaluating only what the KV cache lacks."""
        llama = self._llama
        kept = 0
        cached = llama.input_ids[: llama.n_tokens]
        limit = min(len(cached), len(tokens) - 1)  # the last token is always run: its logits
        while kept < limit and cached[kept] == tokens[kept]:
            kept += 1
        llama.n_tokens = kept  # eval() drops the KV cells after n_tokens first
        llama.eval(tokens[kept:])
        logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),))
        logits = logits.astype(np.float64)
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()


def _system_prompt(language: str) -> str:
    for code in packs.codes():
        pack = packs.get(code)
        if pack.asr_language == language:
            return pack.system_prompt
    return packs.get("en").system_prompt


def create(settings: Settings) -> LlmTurnEnd:
    """A second copy of the GGUF in the ASR worker (+135 MB resident for SmolLM2-135M Q4_1):
    the LLM worker's copy is busy generating replies and lives in another process."""
    allowed = frozenset(code.strip() for code in settings.turn_end_languages.split(",") if code.strip())
    model = settings.turn_end_llm_model or settings.llm_model
    judge = LlmTurnEnd.load(resolve(model, settings.models_dir), threads=settings.turn_end_threads,
                            model_name=model, midpoint=settings.turn_end_llm_midpoint,
                            languages=allowed & LANGUAGES if allowed else LANGUAGES)
    for language in sorted(judge.languages):  # the system prompt into the KV cache (~0.4 s
        judge.probability(np.zeros(0, np.float32), "hello", language)  # here, not at a pause)
    return judge
