"""Smart Turn v3.2 (pipecat-ai's BSD-2-Clause end-of-turn model) through onnxruntime.

A Whisper-tiny encoder with a classifier head, trained on 23 languages to tell a finished turn
from a pause inside one, from the sound alone (intonation, a trailing "and...", a filler). Input:
the last 8 s of the utterance as log-mel features (`turn_end_features`); output: P(complete).
Measured 50-150 ms per call on one thread of the (shared, busy) 2-core machine, so it runs once
per pause, on the session's own thread, and only when the text guard lets it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from asr_worker.turn_end_features import turn_features
from common.models import loaded_model_info, resolve
from common.settings import Settings

# Whisper codes of the languages Smart Turn v3 was trained on (its model card). Shona is not
# one of them: there the turn ends on the silence timeout (see README "Turn-taking").
LANGUAGES = frozenset({
    "ar", "bn", "zh", "da", "nl", "de", "en", "fi", "fr", "hi", "id", "it", "ja", "ko", "mr",
    "no", "pl", "pt", "ru", "es", "tr", "uk", "vi",
})


class SmartTurn:
    def __init__(self, path: Path, *, threads: int = 1, model_name: str = "",
                 languages: frozenset[str] = LANGUAGES) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread: the call is short and the ASR decoder shares the same two cores.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session: Any = ort.InferenceSession(str(path), options,
                                                  providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()  # sessions of several clients call from their threads
        self._path = path
        self._name = model_name or path.name
        self.languages = languages

    def info(self) -> dict[str, str]:
        return loaded_model_info(self._name, self._path, engine="smart-turn", device="cpu")

    def supports(self, language: str) -> bool:
        return language in self.languages

    def probability(self, audio: np.ndarray, text: str = "", language: str = "") -> float:
        features = turn_features(audio)
        with self._lock:
            (out,) = self._session.run(None, {"input_features": features})
        # The exported graph ends in a sigmoid: its "logits" output is already a probability.
        return float(np.asarray(out).reshape(-1)[0])


def create(settings: Settings) -> SmartTurn:
    allowed = frozenset(code.strip() for code in settings.turn_end_languages.split(",") if code.strip())
    return SmartTurn(resolve(settings.turn_end_model, settings.models_dir),
                     threads=settings.turn_end_threads, model_name=settings.turn_end_model,
                     languages=allowed & LANGUAGES if allowed else LANGUAGES)
