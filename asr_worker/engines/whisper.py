"""Whisper speech recognition on CPU: faster-whisper's CTranslate2 model, driven directly.

Stock `WhisperModel.transcribe()` always pads the log-mel features to Whisper's 30 s window
(3000 frames), and the encoder's cost grows with that length: 0.60 s for 3000 frames against
~0.04 s for 500 on two cores. A voice turn is a few seconds long, so the fast path computes the
features of the utterance only, appends a short block of zero features (what stock padding puts
there) and calls `model.model.generate()` on that.

Too little padding makes the decoder loop ("has never been surpassed, has never been
surpassed, ...") because it never sees the utterance end; measured on the fixtures, a 2 s pad
rounded up to whole seconds with a 5 s floor matches stock accuracy. Whatever still comes out
degenerate (a repetition loop or a run into the token cap) is decoded again on the full 30 s
window, which is exactly what stock would have done.

`transcribe_batch` decodes several utterances (other sessions' finals, pauses, partials) in one
`generate` call. Zero padding is not neutral: the encoder attends over the whole padded window, so
a clip padded to a longer clip's length decodes differently (measured on the fixtures: 8 of 12
changed at the 30 s window, 2 even at 8 s). Items are therefore grouped by their own padded
length, and within that by where the start-of-transcript token sits (CTranslate2 requires it at
one position per call), so each item's text is exactly what `transcribe` gives it alone.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asr_worker.interface import (
    SAMPLE_RATE,
    AsrRequest,
    FileTranscript,
    TimedSegment,
    Transcription,
)
from asr_worker.wer import normalize
from common.languages import registry as languages
from common.models import loaded_model_info, resolve

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer

    from common.settings import Settings
HOP_LENGTH = 160  # samples per mel frame: 10 ms
WINDOW_FRAMES = 3000  # Whisper's 30 s window; the encoder takes at most this many frames
WINDOW_SAMPLES = WINDOW_FRAMES * HOP_LENGTH
PAD_FRAMES = 200  # zero features after the speech so the decoder sees where it ends
ROUND_FRAMES = 100  # round up to whole seconds: fewer distinct shapes, steadier decoding
MIN_FRAMES = 500  # below 5 s of context, short clips looped on the fixtures
MIN_AUDIO_S = 0.1  # shorter than this cannot hold a word
SILENCE_PEAK = 1e-3  # peak under -60 dBFS: digital silence, nothing to decode
# Token cap: fast speech is ~4 tokens/s in the fixtures (English and Shona), so twice that plus
# a constant never cuts real speech but bounds a hallucination loop.
TOKENS_PER_SECOND = 8.0
EXTRA_TOKENS = 12
# OpenAI Whisper's silence rule: likely "no speech" and an unsure decode means nothing was said.
NO_SPEECH_PROB = 0.6
NO_SPEECH_LOGPROB = -1.0
AUTO_LANGUAGE = ("", "auto")
MAX_PROMPT_TOKENS = 223  # Whisper's limit for the previous-text prompt (n_text_ctx // 2 - 1)


@dataclass(frozen=True)
class _Decoded:
    text: str
    avg_logprob: float
    no_speech_prob: float
    truncated: bool  # stopped by the token cap rather than by end-of-text


@dataclass(frozen=True)
class _Planned:
    """One request of a batch, ready to encode: its own features and token cap."""

    index: int  # position in the caller's request list
    features: np.ndarray
    max_new: int
    language: str | None
    prompt: str
    fallback_language: str

    @property
    def padded(self) -> int:
        return padded_frames(self.features.shape[-1])


def padded_frames(speech_frames: int) -> int:
    """How many feature frames to feed the encoder for `speech_frames` frames of audio."""
    rounded = math.ceil((speech_frames + PAD_FRAMES) / ROUND_FRAMES) * ROUND_FRAMES
    return min(max(MIN_FRAMES, rounded), WINDOW_FRAMES)


def max_new_tokens(duration_s: float) -> int:
    return int(duration_s * TOKENS_PER_SECOND) + EXTRA_TOKENS


def _min_repeats(span: int) -> int:
    # A word said twice ("no, no") or a pair said twice is ordinary speech; three-word spans
    # said twice in a row almost never are.
    return 5 if span == 1 else 3 if span == 2 else 2


def _is_cut_copy(copy: list[str], first: list[str], at_end: bool) -> bool:
    # A loop that the end of the text cut short: its last copy is a long enough prefix.
    long_enough = len(copy) >= max(3, math.ceil(0.75 * len(first)))
    return at_end and len(first) >= 3 and long_enough and copy == first[: len(copy)]


def _repeat_at(words: list[str], start: int, span: int) -> bool:
    first = words[start : start + span]
    if len(first) < span:
        return False
    needed = _min_repeats(span)
    for k in range(1, needed):
        copy = words[start + k * span : start + (k + 1) * span]
        at_end = start + (k + 1) * span > len(words)
        if copy != first and not (k == needed - 1 and _is_cut_copy(copy, first, at_end)):
            return False
    return True


def _spans(count: int) -> range:
    # Longest span worth testing: one copy plus a cut copy of at least 3/4 of it.
    return range(1, count * 4 // 7 + 2)


def has_repetition_loop(text: str) -> bool:
    """True when some span of words repeats back to back: Whisper's typical hallucination."""
    words = normalize(text).split()
    return any(
        _repeat_at(words, start, span)
        for span in _spans(len(words))
        for start in range(len(words) - span)
    )


def _drop_copies(words: list[str], keys: list[str], start: int, span: int) -> None:
    first = keys[start : start + span]
    end = start + span
    while end < len(keys):
        copy = keys[end : end + span]
        if copy != first and not (end + span > len(keys) and copy == first[: len(copy)]):
            break
        del words[end : end + span], keys[end : end + span]


def collapse_repeats(text: str) -> str:
    """Keep one copy of each looping span; the last resort when no decode was clean."""
    words = text.split()
    keys = [normalize(word) for word in words]
    start = 0
    while start < len(words):
        span = next(
            (n for n in reversed(_spans(len(words))) if _repeat_at(keys, start, n)), None
        )
        if span is None:
            start += 1
        else:
            _drop_copies(words, keys, start, span)
    return " ".join(words)


def _confidence(avg_logprob: float) -> float:
    return float(min(1.0, max(0.0, math.exp(avg_logprob))))


def create(settings: Settings) -> WhisperEngine:
    """The registry's entry: the configured model, its language packs' detection set and
    expected-word prompts."""
    return WhisperEngine.load(
        resolve(settings.asr_model, settings.models_dir), compute_type=settings.asr_compute_type,
        threads=settings.asr_threads, beam_size=settings.asr_beam_size,
        auto_languages=languages.asr_languages(), initial_prompts=languages.asr_initial_prompts(),
        model_name=settings.asr_model,
    )


class WhisperEngine:
    """`ASR` over one faster-whisper model; one call at a time per instance (CTranslate2 runs
    without the GIL, so several engines in threads do run in parallel)."""

    partials = True  # a few tens of ms per partial on the trimmed window
    prompted = True  # `transcribe(..., prompt=)`: decode a tail after text already committed

    def __init__(
        self, model: WhisperModel, beam_size: int = 1, *, auto_languages: Iterable[str] = (),
        initial_prompts: Mapping[str, str] | None = None, path: Path | None = None,
        model_name: str = "",
    ) -> None:
        self._model = model
        self._beam_size = beam_size
        self._lock = threading.Lock()
        self._tokenizers: dict[str, Tokenizer] = {}
        self._suppress: list[int] | None = None
        self.auto_languages: set[str] = set(auto_languages)  # empty: detection may pick any
        self.initial_prompts: dict[str, str] = dict(initial_prompts or {})  # per language
        self._path = path
        self._model_name = model_name or (path.name if path else "whisper")

    @classmethod
    def load(
        cls, model_path: Path, compute_type: str = "int8", threads: int = 2, beam_size: int = 1,
        **options: Any,
    ) -> WhisperEngine:
        """Load a CTranslate2 Whisper directory; never reaches for a model hub."""
        from faster_whisper import WhisperModel

        path = Path(model_path)
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"no CTranslate2 Whisper model (model.bin) in {path}")
        model = WhisperModel(
            str(path), device="cpu", compute_type=compute_type, cpu_threads=threads,
            num_workers=1, local_files_only=True,
        )
        return cls(model, beam_size=beam_size, path=path, **options)

    def info(self) -> dict[str, str]:
        if self._path is None:
            return {"name": self._model_name, "version": "", "sha256": "", "device": "cpu",
                    "engine": "faster-whisper"}
        return loaded_model_info(self._model_name, self._path, engine="faster-whisper", device="cpu")

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def warmup(self) -> None:
        """One short inference so the first user turn does not pay for lazy initialisation."""
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(SAMPLE_RATE) * 0.05).astype(np.float32)
        self.transcribe(noise, language="en" if not self.multilingual else None)

    def transcribe(self, audio: np.ndarray, language: str | None = None, prompt: str = "") -> Transcription:
        """The fast path: features of the utterance only, decoded with CTranslate2 directly.

        `prompt`: the words said just before `audio` (an utterance's committed prefix), given to
        the decoder as previous text so the tail continues them."""
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        fallback_language = "" if language in (None, *AUTO_LANGUAGE) else str(language)
        if samples.size < MIN_AUDIO_S * SAMPLE_RATE or np.abs(samples).max() < SILENCE_PEAK:
            return Transcription("", 0.0, fallback_language)
        with self._lock:
            results = []
            for start in range(0, samples.size, WINDOW_SAMPLES):
                window = samples[start : start + WINDOW_SAMPLES]
                if window.size < MIN_AUDIO_S * SAMPLE_RATE:
                    break
                result = self._transcribe_window(window, language, prompt)
                language = result.language or language  # later windows reuse the detection
                results.append(result)
        return _join(results, fallback_language)

    def transcribe_batch(self, requests: Sequence[AsrRequest]) -> list[Transcription]:
        """Several utterances in one `generate` call per group of equal padded length and prompt
        position; each result is what `transcribe` gives that request alone (same text, same
        fallbacks). More than one 30 s window, or a window that fills it, takes the single path."""
        results: dict[int, Transcription] = {}
        planned: list[_Planned] = []
        for index, request in enumerate(requests):
            plan = self._plan(index, request)
            if isinstance(plan, _Planned):
                planned.append(plan)
            else:
                results[index] = plan if plan is not None else self.transcribe(
                    request.audio, request.language, request.prompt)
        groups: dict[int, list[_Planned]] = {}
        for plan in planned:
            groups.setdefault(plan.padded, []).append(plan)
        with self._lock:
            for group in groups.values():
                results.update(self._decode_group(group))
        return [results[index] for index in range(len(requests))]

    def batch_key(self, request: AsrRequest) -> tuple[int, int] | None:
        """Requests with equal keys can share one `generate` call: the padded length and where
        start-of-transcript sits in the prompt (-1: detected language, known only after encoding).
        None: decoded alone (nothing to hear, or the single path). A cheap forecast made before
        the batch, without features; `transcribe_batch` groups by the real features anyway."""
        samples = np.asarray(request.audio).reshape(-1)
        if samples.size < MIN_AUDIO_S * SAMPLE_RATE or samples.size > WINDOW_SAMPLES:
            return None
        padded = padded_frames(min(samples.size // HOP_LENGTH + 1, WINDOW_FRAMES))  # as extracted
        if padded >= WINDOW_FRAMES:
            return None
        language = request.language
        if not self.multilingual:
            language = "en"
        elif language in (None, *AUTO_LANGUAGE):
            return padded, -1
        tokenizer = self._tokenizer(str(language))
        return padded, self._prompt(tokenizer, str(language), request.prompt).index(tokenizer.sot)

    def transcribe_file(self, audio: np.ndarray, language: str | None = None) -> FileTranscript:
        """A recording of any length, with segment timestamps: faster-whisper's own sequential
        30 s windows (an upload is not latency-bound, and its timestamps are what we want)."""
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        lang = None if language in (None, *AUTO_LANGUAGE) else language
        # Tokens per 30 s window, bounded by what the audio can hold: faster-whisper retries a
        # window at five higher temperatures, each up to 448 tokens, when a decode loops, which
        # noise does (measured: 0.7 s of loud noise as Shona cost 21 s of decoding; the text
        # was dropped as no speech anyway).
        cap = max_new_tokens(min(samples.size / SAMPLE_RATE, WINDOW_SAMPLES / SAMPLE_RATE))
        with self._lock:
            segments, info = self._model.transcribe(
                samples, language=lang, beam_size=self._beam_size, condition_on_previous_text=False,
                vad_filter=False, initial_prompt=self.initial_prompts.get(lang or ""),
                max_new_tokens=cap,
            )
            allowed = self.auto_languages
            if lang is None and allowed and info.language not in allowed:
                # Detection is restricted to the enabled language packs, as for live sessions.
                probs = dict(info.all_language_probs or [])
                lang = max(allowed, key=lambda code: probs.get(code, 0.0))
                segments, info = self._model.transcribe(
                    samples, language=lang, beam_size=self._beam_size,
                    condition_on_previous_text=False, vad_filter=False, max_new_tokens=cap,
                )
            timed = [TimedSegment(round(s.start, 3), round(s.end, 3), s.text.strip(),
                                  _confidence(s.avg_logprob))
                     for s in segments
                     if s.no_speech_prob < NO_SPEECH_PROB or s.avg_logprob > NO_SPEECH_LOGPROB]
        return FileTranscript(timed, info.language, float(info.language_probability),
                              samples.size / SAMPLE_RATE)

    def transcribe_stock(self, audio: np.ndarray, language: str | None = None) -> Transcription:
        """faster-whisper's own `transcribe()`, kept as the benchmark's baseline."""
        lang = None if language in (None, *AUTO_LANGUAGE) else language
        with self._lock:
            segments, info = self._model.transcribe(
                np.asarray(audio, dtype=np.float32).reshape(-1), language=lang, beam_size=1,
                without_timestamps=True, condition_on_previous_text=False, vad_filter=False,
            )
            segments = list(segments)  # decoding happens while the generator is consumed
        text = " ".join(segment.text.strip() for segment in segments).strip()
        logprob = float(np.mean([s.avg_logprob for s in segments])) if segments else -math.inf
        return Transcription(text, _confidence(logprob) if segments else 0.0, info.language)

    # --- internals (called with the lock held) -------------------------------------------------

    def _transcribe_window(self, audio: np.ndarray, language: str | None, prompt: str = "") -> Transcription:
        features = self._model.feature_extractor(audio)[:, :WINDOW_FRAMES]
        max_new = max_new_tokens(audio.size / SAMPLE_RATE)
        encoded = self._encode(features, padded_frames(features.shape[-1]))
        lang = self._resolve_language(encoded, language)
        decoded = self._decode(encoded, lang, max_new, prompt)
        return self._finish(features, lang, max_new, prompt, decoded)

    def _finish(
        self, features: np.ndarray, lang: str, max_new: int, prompt: str, decoded: _Decoded
    ) -> Transcription:
        """Shared by single and batched decodes: the fallback window, loops, the silence rule."""
        if _degenerate(decoded) and padded_frames(features.shape[-1]) < WINDOW_FRAMES:
            if decoded.no_speech_prob > NO_SPEECH_PROB:
                # The model said "no speech" and then looped: noise, not a trimmed window gone
                # wrong. Measured on loud white noise: "NONONO..." at no-speech 0.72, and the
                # stock-window re-decode (8x this decode's CPU) gave no text either.
                return Transcription("", 0.0, lang)
            # The stock-sized window: slower, but what faster-whisper itself would decode.
            decoded = self._decode(self._encode(features, WINDOW_FRAMES), lang, max_new, prompt)
        text = decoded.text
        if has_repetition_loop(text):
            text = collapse_repeats(text)
        if decoded.no_speech_prob > NO_SPEECH_PROB and decoded.avg_logprob < NO_SPEECH_LOGPROB:
            text = ""
        return Transcription(text, _confidence(decoded.avg_logprob) if text else 0.0, lang)

    def _plan(self, index: int, request: AsrRequest) -> _Planned | Transcription | None:
        """A batchable request, or its answer already (nothing to hear), or None: single path."""
        samples = np.asarray(request.audio, dtype=np.float32).reshape(-1)
        language = request.language
        fallback_language = "" if language in (None, *AUTO_LANGUAGE) else str(language)
        if samples.size < MIN_AUDIO_S * SAMPLE_RATE or np.abs(samples).max() < SILENCE_PEAK:
            return Transcription("", 0.0, fallback_language)
        if samples.size > WINDOW_SAMPLES:
            return None
        # The feature extractor is plain numpy without state: safe outside the lock.
        features = self._model.feature_extractor(samples)[:, :WINDOW_FRAMES]
        if padded_frames(features.shape[-1]) >= WINDOW_FRAMES:
            return None  # no wider window to fall back to: its token cap must be its own
        return _Planned(index, features, max_new_tokens(samples.size / SAMPLE_RATE), language,
                        request.prompt, fallback_language)

    def _decode_group(self, group: list[_Planned]) -> dict[int, Transcription]:
        """One encoder call for a group of equal padded length, then the decoder per prompt
        position (called with the lock held)."""
        import ctranslate2

        total = group[0].padded
        batch = np.zeros((len(group), group[0].features.shape[0], total), dtype=np.float32)
        for row, plan in enumerate(group):
            batch[row, :, : plan.features.shape[-1]] = plan.features
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(batch))
        languages = self._resolve_languages(encoded, group)
        prompts = [self._prompt(self._tokenizer(lang), lang, plan.prompt)
                   for plan, lang in zip(group, languages, strict=True)]
        decoded = self._generate_grouped(encoded, group, languages, prompts)
        return {
            plan.index: _join([self._finish(plan.features, lang, plan.max_new, plan.prompt, out)],
                              plan.fallback_language)
            for plan, lang, out in zip(group, languages, decoded, strict=True)
        }

    def _resolve_languages(self, encoded: Any, group: list[_Planned]) -> list[str]:
        if not self.multilingual:
            return ["en"] * len(group)
        given = [plan.language not in (None, *AUTO_LANGUAGE) for plan in group]
        detected = self._model.model.detect_language(encoded) if not all(given) else []
        return [str(plan.language) if known else self._pick_language(detected[row])
                for row, (plan, known) in enumerate(zip(group, given, strict=True))]

    def _generate_grouped(self, encoded: Any, group: list[_Planned], languages: list[str],
                          prompts: list[list[int]]) -> list[_Decoded]:
        """CTranslate2 wants start-of-transcript at one position in every prompt of a call:
        prompts with different previous-text lengths go in separate calls."""
        import ctranslate2

        tokenizers = [self._tokenizer(lang) for lang in languages]
        by_position: dict[int, list[int]] = {}
        for row, (prompt, tokenizer) in enumerate(zip(prompts, tokenizers, strict=True)):
            by_position.setdefault(prompt.index(tokenizer.sot), []).append(row)
        decoded: dict[int, _Decoded] = {}
        for rows in by_position.values():
            part = encoded
            if len(rows) < len(group):  # the encoder's output rows of this call only
                part = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[rows]))
            cap = max(group[row].max_new for row in rows)
            results = self._generate(part, [prompts[row] for row in rows], cap, tokenizers[rows[0]])
            for row, result in zip(rows, results, strict=True):
                decoded[row] = _decoded(tokenizers[row], result, group[row].max_new)
        return [decoded[row] for row in range(len(group))]

    def _encode(self, features: np.ndarray, total_frames: int) -> Any:
        import ctranslate2

        padded = np.zeros((1, features.shape[0], total_frames), dtype=np.float32)
        used = min(features.shape[-1], total_frames)
        padded[0, :, :used] = features[:, :used]
        return self._model.model.encode(ctranslate2.StorageView.from_array(padded))

    def _resolve_language(self, encoded: Any, language: str | None) -> str:
        if not self.multilingual:
            return "en"
        if language not in (None, *AUTO_LANGUAGE):
            return str(language)
        return self._pick_language(self._model.model.detect_language(encoded)[0])

    def _pick_language(self, detected: list[tuple[str, float]]) -> str:
        ranked = [(token.strip("<|>"), p) for token, p in detected]
        if self.auto_languages:  # "auto" chooses among the enabled language packs only
            ranked = [(code, p) for code, p in ranked if code in self.auto_languages] or ranked
        return ranked[0][0]  # tokens look like "<|en|>"

    def _decode(self, encoded: Any, language: str, max_new: int, said: str = "") -> _Decoded:
        tokenizer = self._tokenizer(language)
        prompt = self._prompt(tokenizer, language, said)
        result = self._generate(encoded, [prompt], max_new, tokenizer)[0]
        return _decoded(tokenizer, result, max_new)

    def _prompt(self, tokenizer: Tokenizer, language: str, said: str) -> list[int]:
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        # The words said just before come last: the prompt is cut from the front when too long.
        previous = " ".join(p for p in (self.initial_prompts.get(language, ""), said.strip()) if p)
        if previous:  # Whisper's "previous text" slot: the words and names to expect
            context = tokenizer.encode(" " + previous.strip())[-(MAX_PROMPT_TOKENS):]
            prompt = [tokenizer.sot_prev, *context, *prompt]
        return prompt

    def _generate(self, encoded: Any, prompts: list[list[int]], max_new: int,
                  tokenizer: Tokenizer) -> list[Any]:
        return list(self._model.model.generate(
            encoded, prompts, beam_size=self._beam_size, max_length=2 * max_new,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=self._suppressed_tokens(tokenizer),
        ))

    def _tokenizer(self, language: str) -> Tokenizer:
        if language not in self._tokenizers:
            from faster_whisper.tokenizer import Tokenizer

            self._tokenizers[language] = Tokenizer(
                self._model.hf_tokenizer, self.multilingual, task="transcribe",
                language=language if self.multilingual else None,
            )
        return self._tokenizers[language]

    def _suppressed_tokens(self, tokenizer: Tokenizer) -> list[int]:
        # The same set faster-whisper uses for suppress_tokens=[-1]: non-speech symbols and the
        # special tokens; it does not depend on the language, so it is computed once.
        if self._suppress is None:
            from faster_whisper.transcribe import get_suppressed_tokens

            self._suppress = list(get_suppressed_tokens(tokenizer, [-1]))
        return self._suppress


def _decoded(tokenizer: Tokenizer, result: Any, max_new: int) -> _Decoded:
    tokens = result.sequences_ids[0]
    # CTranslate2 scores are the sum of log-probs over length (length_penalty 1); like
    # faster-whisper, average over the tokens plus end-of-text.
    avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
    return _Decoded(
        text=tokenizer.decode(tokens).strip(), avg_logprob=avg_logprob,
        no_speech_prob=result.no_speech_prob,
        # Whisper's generate stops at max_length // 2 new tokens (OpenAI's sample_len rule); in
        # a batch the cap is the largest item's, so each item is checked against its own.
        truncated=len(tokens) >= max_new,
    )


def _degenerate(decoded: _Decoded) -> bool:
    return decoded.truncated or has_repetition_loop(decoded.text)


def _join(results: list[Transcription], fallback_language: str) -> Transcription:
    spoken = [r for r in results if r.text]
    if not spoken:
        language = results[0].language if results else fallback_language
        return Transcription("", 0.0, language)
    text = " ".join(r.text for r in spoken)
    confidence = float(np.mean([r.confidence for r in spoken]))
    return Transcription(text, confidence, spoken[0].language)
