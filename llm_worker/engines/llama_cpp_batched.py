"""`INZWA_LLM_ENGINE=llama-cpp-batched`: one GGUF model, several replies decoded together.

The single `llama-cpp` engine serves one generation at a time, so concurrent sessions queue
behind each other. Here one llama.cpp context holds `INZWA_LLM_CONCURRENCY` sequences (slots),
each with its own KV stream of `INZWA_LLM_BATCH_SLOT_CONTEXT` tokens, and one decode thread owns
it: every step it puts the next token of every generating sequence, plus chunks of pending
prompts, into ONE `llama_decode` call, then samples each sequence from its own logits row. The
weights are read once per step instead of once per sequence; on the 2-core CPU a step still costs
almost linearly more with more sequences (compute-bound), so the gain measured is mostly that no
request waits for other people's whole replies (README, `python -m bench.llm_batch`).

- Sampling is the single engine's chain (llama-cpp-python's `Llama._init_sampler`): repeat
  penalty 1.1 over the last 64 generated tokens, then greedy at temperature 0, or top-k 40,
  top-p 0.95, min-p 0.05, temperature and a seeded draw otherwise; one chain per request. At
  temperature 0 a request alone gives the single engine's text token for token.
- KV reuse: a slot keeps the tokens it last held. A request takes the free slot sharing the
  longest token prefix with its prompt (a session's next turn extends its previous prompt; every
  slot starts with the system prompt after `warm`), drops the rest and prefills the difference.
- KV streams are per sequence (`kv_unified` off): a sequence's cells sit at the same places
  whoever else is decoding, so from the same cache state its text does not depend on the other
  sequences in the batch (tests/test_llm_batched.py). A prefix reused from a slot's cache was
  computed in other prefill chunks than a fresh prompt, which can round differently and, at a
  near-tie, make greedy decoding pick another word.
- A consumer that closes its stream (barge-in) frees the slot at the next step; a failed decode
  fails the requests in it with the error (their slots are cleared), never a hang.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from common.models import loaded_model_info, resolve
from common.settings import Settings
from llm_worker.interface import Messages

log = logging.getLogger(__name__)

N_BATCH = 512  # tokens per llama_decode (llama-cpp-python's default n_batch)
PENALTY_LAST_N = 64  # llama-cpp-python's default repeat-penalty window (last_n_tokens_size)
# prompt tokens per step: a long prompt is prefilled in chunks, so the sequences already
# speaking get their next token between chunks instead of waiting for the whole prompt
PREFILL_PER_STEP = 128
REPEAT_PENALTY = 1.1  # as the single engine: SmolLM2 loops without it
_END = object()  # the end of a request's stream


def create(settings: Settings) -> BatchedLlamaCppEngine:
    return BatchedLlamaCppEngine.load(
        resolve(settings.llm_model, settings.models_dir), slots=settings.llm_concurrency,
        slot_context=settings.llm_batch_slot_context, threads=settings.llm_threads,
        seed=settings.llm_seed, temperature=settings.llm_temperature, model_name=settings.llm_model,
    )


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    max_new: int
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[object]
    pending: list[int] = field(default_factory=list)  # tokens to decode before the next sample
    generated: int = 0
    admitted: int = 0  # the order requests got their slots: prompts are prefilled in this order
    cancelled: bool = False
    sampler: Any = None  # llama-cpp-python's LlamaSampler, made and freed by the decode thread
    text: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    def send(self, item: object) -> None:
        """Hand a piece, an error or _END to the consumer's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            self.cancelled = True


@dataclass(eq=False)
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # the tokens whose K/V this sequence holds
    request: _Request | None = None
    used_at: float = 0.0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _context(model: Any, slots: int, slot_context: int, threads: int) -> Any:
    """A context with one KV stream per slot, set up like llama-cpp-python's `Llama`."""
    import llama_cpp
    from llama_cpp import _internals

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = slots * slot_context
    params.n_batch = params.n_ubatch = N_BATCH
    params.n_seq_max = slots
    # per-sequence streams: a reply does not depend on its neighbours in the batch. One shared
    # stream (kv_unified) decoded 8 x 40 tokens ~15 % faster here, but replies then changed with
    # the batch ("Kenia is the capital of Kenya." beside three other questions).
    params.kv_unified = False
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as `Llama` by default
    return _internals.LlamaContext(model=model, params=params, verbose=False)


class BatchedLlamaCppEngine:
    """A GGUF model decoding `concurrency` requests together in one llama.cpp context."""

    def __init__(self, model: Any, ctx: Any, *, slots: int, slot_context: int,
                 temperature: float, seed: int, path: Path | None = None,
                 model_name: str = "") -> None:
        import llama_cpp

        self.concurrency = slots
        self.slot_context = slot_context
        self.prefilled_tokens = 0  # prompt tokens decoded so far: what KV reuse saves shows here
        self._model, self._ctx = model, ctx
        self._memory = llama_cpp.llama_get_memory(ctx.ctx)
        self._batch: Any = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        self._piece_buf = ctypes.create_string_buffer(64)
        self._temperature, self._seed, self._draws = temperature, seed, 0
        self._path, self._model_name = path, model_name or (path.name if path else "gguf")
        self._slots = [_Slot(seq_id) for seq_id in range(slots)]
        self._waiting: deque[_Request] = deque()
        self._admissions = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._broken: BaseException | None = None
        self._formatter = self._chat_formatter()
        self._thread = threading.Thread(target=self._run, name="llama-batch", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, model_path: Path, *, slots: int = 4, slot_context: int = 2048, threads: int = 1,
             seed: int = 0, temperature: float = 0.3, model_name: str = "") -> BatchedLlamaCppEngine:
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose

        set_verbose(False)
        llama_cpp.llama_backend_init()
        model = _internals.LlamaModel(path_model=str(model_path),
                                      params=llama_cpp.llama_model_default_params(), verbose=False)
        ctx = _context(model, slots, slot_context, threads)
        return cls(model, ctx, slots=slots, slot_context=slot_context, temperature=temperature,
                   seed=seed, path=Path(model_path), model_name=model_name)

    def info(self) -> dict[str, str]:
        """The single engine's info, plus the slots: the orchestrator's overload ladder counts
        generation slots from READY instances' announced `concurrency`."""
        info = ({"name": self._model_name, "version": "", "sha256": "", "device": "cpu",
                 "engine": "llama-cpp-batched"} if self._path is None else
                loaded_model_info(self._model_name, self._path, engine="llama-cpp-batched",
                                  device="cpu"))
        return {**info, "concurrency": str(self.concurrency)}

    async def warm(self, system_prompt: str = "") -> None:
        """A tiny generation in every slot at once: each then starts with the system prompt in
        its KV cache, whichever slot a session's first turn lands in."""
        messages = [{"role": "user", "content": "Hi"}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})

        async def one() -> None:
            async for _ in self.stream(messages, max_new_tokens=2):
                pass

        await asyncio.gather(*(one() for _ in range(self.concurrency)))

    def close(self) -> None:
        """Stop the decode thread and free the context (tests; a worker just exits)."""
        import llama_cpp

        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=10)
        if not self._thread.is_alive() and self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
            self._ctx.close()
            self._model.close()

    # --- the consumer's side (the worker's event loop) ---

    def _chat_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = self._model  # special tokens' text (detokenize renders them empty)
        return Jinja2ChatFormatter(template=model.metadata()["tokenizer.chat_template"],
                                   bos_token=model.token_get_text(model.token_bos()),
                                   eos_token=model.token_get_text(model.token_eos()))

    def prompt_tokens(self, messages: Messages, prefix: str = "") -> list[int]:
        """The chat template's prompt (plus the reply's first part), tokenized as the single
        engine does: the template writes its own special tokens."""
        formatted = self._formatter(messages=cast(Any, messages))  # plain dicts of the right shape
        tokens: list[int] = self._model.tokenize((formatted.prompt + prefix).encode(),
                                                 add_bos=False, special=True)
        if prefix and self._model.add_bos_token():  # `create_completion` of a string adds it
            tokens.insert(0, self._model.token_bos())
        return tokens

    def _request(self, messages: Messages, max_new_tokens: int, prefix: str) -> _Request:
        prompt = self.prompt_tokens(messages, prefix)
        if prefix:  # the prefix counts against the reply's length, as in the single engine
            spent = len(self._model.tokenize(prefix.encode(), add_bos=False, special=False))
            max_new_tokens = max(1, max_new_tokens - spent)
        room = self.slot_context - len(prompt)
        if room < 1:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit a slot's context "
                             f"of {self.slot_context} (INZWA_LLM_BATCH_SLOT_CONTEXT)")
        return _Request(prompt=prompt, max_new=max(1, min(max_new_tokens, room)),
                        loop=asyncio.get_running_loop(), out=asyncio.Queue())

    async def stream(self, messages: Messages, *, max_new_tokens: int,
                     prefix: str = "") -> AsyncIterator[str]:
        request = self._request(messages, max_new_tokens, prefix)
        with self._wake:
            if self._broken is not None or self._closed:  # no thread left to serve it
                raise RuntimeError(f"the batched llama.cpp engine stopped: {self._broken!r}")
            self._waiting.append(request)
            self._wake.notify()
        try:
            while True:
                item = await request.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield cast(str, item)
        finally:
            request.cancelled = True  # a no-op once ended; else the slot is freed next step
            with self._wake:
                self._wake.notify()

    # --- the decode thread: the only one touching the context ---

    def _run(self) -> None:
        try:
            while self._next_work():
                try:
                    self._step()
                except Exception as exc:  # a failed decode fails its requests, not the engine
                    log.exception("batched decode failed")
                    self._fail_active(exc)
        except BaseException as exc:  # a bug in the loop itself: every request hears of it
            log.exception("batched llama.cpp decode thread stopped")
            self._fail_all(exc)

    def _next_work(self) -> bool:
        """Admit waiting requests to free slots; sleep while there is nothing to decode.
        False once closed."""
        with self._wake:
            while not self._closed:
                self._admit()
                if any(slot.request is not None for slot in self._slots):
                    return True
                self._wake.wait()
            return False

    def _admit(self) -> None:
        while self._waiting:
            request = self._waiting[0]
            if request.cancelled:
                self._waiting.popleft()
                continue
            free = [slot for slot in self._slots if slot.request is None]
            if not free:
                return
            self._waiting.popleft()
            self._bind(max(free, key=lambda s: (common_prefix(s.cached, request.prompt),
                                                -s.used_at)), request)

    def _bind(self, slot: _Slot, request: _Request) -> None:
        """Keep the slot's common prefix with the prompt, prefill only the rest. At least one
        prompt token is decoded again: its logits give the first reply token."""
        import llama_cpp

        keep = min(common_prefix(slot.cached, request.prompt), len(request.prompt) - 1)
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
            keep = 0  # a partial removal refused: start the sequence over
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        slot.cached = slot.cached[:keep]
        request.pending = request.prompt[keep:]
        request.sampler = self._sampler()
        request.admitted = next(self._admissions)
        slot.request = request

    def _sampler(self) -> Any:
        """llama-cpp-python's `Llama._init_sampler` chain for the settings the single engine
        uses (repeat penalty 1.1; greedy at temperature 0)."""
        from llama_cpp import _internals

        sampler = _internals.LlamaSampler()
        sampler.add_penalties(n_vocab=self._model.n_vocab(), penalty_last_n=PENALTY_LAST_N,
                              penalty_repeat=REPEAT_PENALTY, penalty_freq=0.0, penalty_present=0.0)
        if self._temperature <= 0.0:
            sampler.add_greedy()
            return sampler
        sampler.add_top_k(40)
        sampler.add_typical(1.0, 1)
        sampler.add_top_p(0.95, 1)
        sampler.add_min_p(0.05, 1)
        sampler.add_temp(self._temperature)
        # a new seed per request, as the single engine draws one per completion: the same
        # question twice is not answered word for word alike (0xFFFFFFFF would mean "random")
        self._draws += 1
        sampler.add_dist((self._seed + self._draws) % 0xFFFFFFFF)
        return sampler

    def _step(self) -> None:
        """One llama_decode for every active sequence, then one sample for each that finished
        its pending tokens."""
        import llama_cpp

        for slot in self._slots:
            if slot.request is not None and slot.request.cancelled:
                self._finish(slot)
        plan = self._plan()
        if not plan:
            return
        outputs = self._fill(plan)
        code = llama_cpp.llama_decode(self._ctx.ctx, self._batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        for slot, index in outputs:
            self._sample(slot, index)

    def _plan(self) -> list[tuple[_Slot, int]]:
        """How many pending tokens each active slot decodes this step: one for each generating
        sequence, then prompt chunks, first come first served, up to PREFILL_PER_STEP."""
        active = [slot for slot in self._slots if slot.request is not None]
        generating = [s for s in active if s.request is not None and s.request.generated > 0]
        prefilling = sorted((s for s in active if s not in generating),
                            key=lambda s: s.request.admitted if s.request is not None else 0)
        plan = [(slot, 1) for slot in generating]
        room = min(N_BATCH - len(generating), PREFILL_PER_STEP)
        for slot in prefilling:
            assert slot.request is not None
            take = min(len(slot.request.pending), room)
            if take > 0:
                plan.append((slot, take))
                room -= take
        return plan

    def _fill(self, plan: list[tuple[_Slot, int]]) -> list[tuple[_Slot, int]]:
        """Write the plan into the llama_batch; returns the slots to sample with their logits
        row (the batch index of their last token, when it is the last pending one)."""
        batch, i, outputs = self._batch, 0, []
        for slot, take in plan:
            request = slot.request
            assert request is not None
            tokens, request.pending = request.pending[:take], request.pending[take:]
            for k, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = len(slot.cached) + k
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = slot.seq_id
                batch.logits[i] = k == take - 1 and not request.pending
                i += 1
            slot.cached.extend(tokens)
            if request.generated == 0:
                self.prefilled_tokens += take
            if not request.pending:
                outputs.append((slot, i - 1))
        batch.n_tokens = i
        return outputs

    def _sample(self, slot: _Slot, index: int) -> None:
        import llama_cpp

        request = slot.request
        assert request is not None
        token = llama_cpp.llama_sampler_sample(request.sampler.sampler, self._ctx.ctx, index)
        if llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
            self._finish(slot)
            return
        piece = request.text.decode(self._piece(token))
        if piece:
            request.send(piece)
        request.generated += 1
        if request.generated >= request.max_new:
            self._finish(slot)
        else:
            request.pending = [token]

    def _piece(self, token: int) -> bytes:
        """The token's bytes (special tokens render empty, as in the single engine's text)."""
        import llama_cpp

        n = llama_cpp.llama_token_to_piece(self._model.vocab, token, self._piece_buf,
                                           len(self._piece_buf), 0, False)
        if n < 0:  # longer than the buffer: -n is the size it needs
            self._piece_buf = ctypes.create_string_buffer(-n)
            return self._piece(token)
        return self._piece_buf.raw[:n]

    def _finish(self, slot: _Slot, error: BaseException | None = None) -> None:
        """End the slot's request (the rest of a split UTF-8 character, then the end or the
        error) and free the slot; its cached tokens stay for the next request's prefix."""
        request = slot.request
        assert request is not None
        tail = request.text.decode(b"", final=True)
        if tail and error is None:
            request.send(tail)
        request.send(error if error is not None else _END)
        if request.sampler is not None:
            request.sampler.close()
            request.sampler = None
        slot.request, slot.used_at = None, time.monotonic()

    def _fail_active(self, exc: BaseException) -> None:
        """A decode failed: its sequences' KV state is unknown, so they start over."""
        import llama_cpp

        for slot in self._slots:
            if slot.request is not None:
                llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                slot.cached = []
                self._finish(slot, RuntimeError(f"batched generation failed: {exc}"))

    def _fail_all(self, exc: BaseException) -> None:
        with self._wake:
            self._broken = exc
            for slot in self._slots:
                if slot.request is not None:
                    slot.request.send(RuntimeError(f"batched generation failed: {exc!r}"))
                    slot.request = None
            while self._waiting:
                self._waiting.popleft().send(RuntimeError(f"batched generation failed: {exc!r}"))
