"""`INZWA_TTS_ENGINE=piper-onnx`: Piper VITS voices run with onnxruntime, streamed as
fixed-size PCM16 frames. A phoneme voice (`tts_worker.interface.PhonemeVoice`).

Piper itself (piper-tts) is GPL-3.0 and is not used: its voice format is simple enough to drive
directly. A voice is an ONNX model plus a JSON config holding the sample rate, the inference
scales, the espeak-ng voice and `phoneme_id_map`, which maps each IPA code point to ids.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.languages.base import Phonemizer
from common.models import loaded_model_info, resolve
from common.settings import Settings
from tts_worker.onnx_graph import vits_lengths_output, with_output
from tts_worker.pcm import FrameBuffer, Framer

log = logging.getLogger(__name__)

__all__ = ["FrameBuffer", "PiperVoice", "VoiceConfig", "create", "limit_peak", "phonemes_to_ids"]

PAD, BOS, EOS = "_", "^", "$"
# Resampling overshoots a little around peaks; leaving headroom keeps float_to_pcm16 from
# clipping (a clipped sample is an audible click).
_PEAK_LIMIT = 0.97


class InferenceSession(Protocol):
    """The part of `onnxruntime.InferenceSession` used here (tests pass a fake)."""

    def get_inputs(self) -> list[Any]: ...

    def run(self, output_names: Any, input_feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class VoiceConfig:
    sample_rate: int
    phoneme_id_map: Mapping[str, list[int]]
    espeak_voice: str
    noise_scale: float = 0.667
    length_scale: float = 1.0
    noise_w: float = 0.8
    num_speakers: int = 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VoiceConfig:
        phoneme_type = data.get("phoneme_type", "espeak")
        if phoneme_type != "espeak":
            raise ValueError(f"unsupported Piper phoneme_type {phoneme_type!r} (need 'espeak')")
        scales = data.get("inference", {})
        return cls(
            sample_rate=int(data["audio"]["sample_rate"]),
            phoneme_id_map={key: list(ids) for key, ids in data["phoneme_id_map"].items()},
            espeak_voice=data.get("espeak", {}).get("voice", "en-us"),
            noise_scale=float(scales.get("noise_scale", 0.667)),
            length_scale=float(scales.get("length_scale", 1.0)),
            noise_w=float(scales.get("noise_w", 0.8)),
            num_speakers=int(data.get("num_speakers", 1)),
        )

    @classmethod
    def load(cls, path: Path) -> VoiceConfig:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def phonemes_to_ids(
    phonemes: Iterable[str], id_map: Mapping[str, list[int]]
) -> tuple[list[int], Counter[str]]:
    """Piper's id scheme: BOS, pad, then each phoneme followed by a pad, then EOS.

    Returns the ids and the phonemes the map lacks (with counts), which are left out.
    """
    pad = id_map[PAD]
    ids = [*id_map[BOS], *pad]
    skipped: Counter[str] = Counter()
    for phoneme in phonemes:
        mapped = id_map.get(phoneme)
        if mapped is None:
            skipped[phoneme] += 1
            continue
        ids.extend(mapped)
        ids.extend(pad)
    ids.extend(id_map[EOS])
    return ids, skipped


def limit_peak(audio: np.ndarray, limit: float = _PEAK_LIMIT) -> np.ndarray:
    """Scale audio down (never up) so that its peak is at most `limit`."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > limit:
        return audio * np.float32(limit / peak)
    return audio


def _batch_model(onnx_path: Path) -> bytes | None:
    """The voice's model with each item's length as a second output; None (logged) when its
    graph does not show the lengths."""
    graph = onnx_path.read_bytes()
    try:
        lengths = vits_lengths_output(graph)
    except (ValueError, IndexError, StopIteration, UnicodeDecodeError):  # not a graph read here
        lengths = ""
    if not lengths:
        log.warning("this voice's graph does not show item lengths: it is not batched")
        return None
    return with_output(graph, lengths)


def create(settings: Settings) -> PiperVoice:
    return PiperVoice.load(resolve(settings.tts_model, settings.models_dir),
                           threads=settings.tts_threads, espeak_voice=settings.tts_espeak_voice,
                           model_name=settings.tts_model, providers=settings.tts_onnx_providers,
                           batch=settings.tts_batch_max > 1)


class PiperVoice:
    """A Piper VITS voice: espeak-ng IPA → phoneme ids → onnxruntime → audio."""

    def __init__(
        self,
        config: VoiceConfig,
        session: InferenceSession,
        phonemizer: Phonemizer,
        *,
        sentence_gap_ms: int = 5,
        path: Path | None = None,
        model_name: str = "",
        batches: bool = False,
    ) -> None:
        self._path = path
        self._model_name = model_name or (path.name if path else "piper")
        self.config = config
        self.session = session
        self.phonemizer = phonemizer
        self.sentence_gap_ms = sentence_gap_ms
        self.skipped_phonemes: Counter[str] = Counter()  # every phoneme the map lacked so far
        self._input_names = {node.name for node in session.get_inputs()}
        missing = {"input", "input_lengths"} - self._input_names
        if missing:
            raise ValueError(f"not a Piper VITS model: inputs {sorted(missing)} are missing")
        # A speaking rate per request is VITS's length_scale, an input of the model (exports
        # without the `scales` input have theirs baked in).
        self.speeds = "scales" in self._input_names
        # `batches`: the session's second output is each item's length (`with_output`), so
        # `infer_batch` can cut every item's audio out of the padded batch.
        self.batches = batches
        # A batcher (tts_worker.batching) routes each sentence's inference through itself, to
        # share a run with other sessions' sentences; None: each sentence runs here, alone.
        self.inference: Callable[[str, float], np.ndarray] | None = None

    @classmethod
    def load(
        cls,
        onnx_path: Path,
        config_path: Path | None = None,
        threads: int = 1,
        espeak_voice: str = "",
        model_name: str = "",
        providers: Sequence[str] = ("CPUExecutionProvider",),
        batch: bool = False,
    ) -> PiperVoice:
        """Load a voice; `espeak_voice` overrides the config's espeak-ng voice. `providers` in
        order of preference; those this onnxruntime build lacks are left out (CPU remains).
        `batch`: load it able to `infer_batch` (when its graph shows the item lengths)."""
        import onnxruntime as ort  # heavy: only the TTS worker pays for it

        from tts_worker.phonemizer import EspeakPhonemizer

        onnx_path = Path(onnx_path)
        config = VoiceConfig.load(Path(config_path or f"{onnx_path}.json"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one sequential graph: more threads only contend
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = set(ort.get_available_providers())
        usable = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        batched = _batch_model(onnx_path) if batch else None
        session = None
        if batched is not None:
            try:
                session = ort.InferenceSession(batched, sess_options=options, providers=usable)
            except Exception:  # the voice still speaks, one sentence per run
                log.exception("the voice with its length output did not load: it is not batched")
                batched = None
        if session is None:
            session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=usable)
        phonemizer = EspeakPhonemizer(espeak_voice or config.espeak_voice)
        return cls(config, session, phonemizer, path=onnx_path, model_name=model_name,
                   batches=batched is not None)

    @property
    def device(self) -> str:
        """Where the voice really runs: the provider onnxruntime chose, not the one asked for."""
        providers: list[str] = getattr(self.session, "get_providers", list)()
        return "cuda" if "CUDAExecutionProvider" in providers else "cpu"

    def info(self) -> dict[str, str]:
        if self._path is None:
            return {"name": self._model_name, "version": "", "sha256": "", "device": self.device,
                    "engine": "piper-onnx"}
        return loaded_model_info(self._model_name, self._path, engine="piper-onnx",
                                 device=self.device)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def phoneme_ids(self, phonemes: str) -> list[int]:
        """Ids for one sentence's IPA; phonemes the voice lacks are skipped, counted in
        `skipped_phonemes` and logged at debug level."""
        # Piper's maps hold decomposed (NFD) symbols: "ç" is "c" plus a combining cedilla.
        phonemes = unicodedata.normalize("NFD", phonemes)
        ids, skipped = phonemes_to_ids(phonemes, self.config.phoneme_id_map)
        if skipped:
            self.skipped_phonemes.update(skipped)
            log.debug("phonemes missing from the voice's map were skipped: %s", dict(skipped))
        return ids

    def _feed(self, ids: np.ndarray, lengths: np.ndarray, speed: float) -> dict[str, np.ndarray]:
        feed: dict[str, np.ndarray] = {"input": ids, "input_lengths": lengths}
        if "scales" in self._input_names:
            cfg = self.config
            feed["scales"] = np.array(
                [cfg.noise_scale, cfg.length_scale / speed, cfg.noise_w], dtype=np.float32
            )
        if "sid" in self._input_names:  # multi-speaker voices: the first speaker
            feed["sid"] = np.zeros(len(lengths), dtype=np.int64)
        return feed

    def _infer(self, phonemes: str, speed: float = 1.0) -> np.ndarray:
        """Float32 audio at the native rate for one sentence's IPA, `speed` times as fast."""
        ids = self.phoneme_ids(phonemes)
        feed = self._feed(np.array([ids], dtype=np.int64), np.array([len(ids)], dtype=np.int64),
                          speed)
        audio = self.session.run(None, feed)[0]
        return limit_peak(np.asarray(audio, dtype=np.float32).reshape(-1))

    def infer_batch(self, items: Sequence[tuple[str, float]]) -> list[np.ndarray]:
        """`_infer` for several sentences (IPA, speed) in one run: ids padded to the longest,
        each item's audio cut at its own length. One run has one `scales` vector, so every
        item must have the same speed (`tts_worker.batching` groups them so)."""
        if not self.batches:
            raise RuntimeError("this voice was not loaded to infer batches")
        if len({speed for _, speed in items}) != 1:
            raise ValueError("one batch, one speed: items with other speeds go in another run")
        rows = [self.phoneme_ids(phonemes) for phonemes, _ in items]
        ids = np.full((len(rows), max(map(len, rows))), self.config.phoneme_id_map[PAD][0],
                      dtype=np.int64)  # (the padding is masked out: any id would do)
        for index, row in enumerate(rows):
            ids[index, :len(row)] = row
        lengths = np.array([len(row) for row in rows], dtype=np.int64)
        audio, frames = self.session.run(None, self._feed(ids, lengths, items[0][1]))[:2]
        audio = np.asarray(audio, dtype=np.float32).reshape(len(rows), -1)
        hop = audio.shape[1] // int(np.max(frames))  # samples per latent frame (256)
        return [limit_peak(audio[index, :int(count) * hop])
                for index, count in enumerate(np.asarray(frames).reshape(-1))]

    def _sentences(self, text: str, phonemizer: Phonemizer | None = None,
                   speed: float = 1.0) -> Iterator[np.ndarray]:
        """Audio per sentence, a short silence after each but the last so that sentences
        join without a click or a fade."""
        sentences = (phonemizer or self.phonemizer).phonemize(text)
        gap = np.zeros(self.sample_rate * self.sentence_gap_ms // 1000, dtype=np.float32)
        infer = self.inference or self._infer
        for index, phonemes in enumerate(sentences):
            audio = infer(phonemes, speed)
            yield np.concatenate([audio, gap]) if index < len(sentences) - 1 else audio

    def synthesize(self, text: str) -> np.ndarray:
        """The whole text as float32 audio at the native rate."""
        chunks = list(self._sentences(text))
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def synthesize_stream(
        self, text: str, *, sample_rate: int = 16000, frame_ms: int = 20, language: str = "",
        phonemizer: Phonemizer | None = None, speed: float = 1.0,
    ) -> Iterator[bytes]:
        """PCM16 frames of `frame_ms`, sentence by sentence: the first frames come out as
        soon as the first sentence is synthesized. `phonemizer` (a language's G2P) replaces
        the voice's own for this text; without one, the language pack's text normalization
        (amounts, dates, times... as words) runs before the voice's own espeak-ng."""
        if phonemizer is None:
            from common.languages import registry

            text = registry.get(language or "en").speech_text(text)
        framer = Framer(self.sample_rate, sample_rate, frame_ms)
        for audio in self._sentences(text, phonemizer, speed):
            yield from framer.push(audio)
        yield from framer.flush()

    def warmup(self) -> None:
        """One short synthesis: onnxruntime allocates and plans on the first run."""
        self.synthesize("Hello.")
