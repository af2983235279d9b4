"""Sentences of several sessions synthesized together in one VITS run (issue 15 item 3).

With `tts_batch_max` > 1 the TTS worker synthesizes phrases of different sessions at once, each in
its own thread (`TtsWorker`), and each phrase's sentences reach the voice's inference one at a
time. `TtsBatcher` sits in front of that inference (`PiperVoice.inference`): one dispatcher thread
runs it, and the sentences that queued up while a run was going go together in the next one
(`PiperVoice.infer_batch`), first come first served.

Only sentences with the same speed share a run: VITS takes one `scales` vector (length_scale
among them) per run, so the speed is the batch key.

A lone sentence never waits: when nothing is running it is synthesized at once, on the voice's
single path (the same audio as without batching). Only sentences that queue behind a running
inference are batched, and those may wait up to `window_ms` from the first of them for more to
arrive (they have usually waited that long already, behind the running one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from common.batcher import Batcher

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from common.settings import Settings



@runtime_checkable
class BatchVoice(Protocol):
    """A voice whose sentence inference can run alone or in a batch (`PiperVoice`)."""

    batches: bool
    inference: Callable[[str, float], np.ndarray] | None

    def _infer(self, phonemes: str, speed: float = 1.0) -> np.ndarray: ...

    def infer_batch(self, items: Sequence[tuple[str, float]]) -> list[np.ndarray]: ...


class TtsBatcher:
    """Runs a voice's sentence inferences, batching those that queue behind a running one."""

    def __init__(self, voice: BatchVoice, *, window_ms: float = 5.0, max_batch: int = 8) -> None:
        self._voice = voice
        self._batcher: Batcher[tuple[str, float], np.ndarray] = Batcher(
            self._alone, voice.infer_batch, window_ms=window_ms, max_batch=max_batch,
            name="tts-batcher")

    def infer(self, phonemes: str, speed: float = 1.0) -> np.ndarray:
        """Blocks the calling thread until its sentence's run (alone or batched) is done; an
        error is raised here, in the caller whose sentence caused it. The speed is the batch
        key: one run, one `scales` vector."""
        return self._batcher.submit((phonemes, speed), speed)

    def _alone(self, item: tuple[str, float]) -> np.ndarray:
        return self._voice._infer(*item)

    def stats(self) -> dict[str, Any]:
        """Runs per batch size, the sentences they served, and the sentences queued now."""
        return self._batcher.stats()


def batching(settings: Settings) -> bool:
    return settings.tts_batch_max > 1


def attach(voice: Any, settings: Settings) -> TtsBatcher | None:
    """Route the voice's sentences through a batcher when batching is on and the voice can run a
    batch; the batcher (for its stats), or None when the voice is left as it was."""
    if not batching(settings) or not isinstance(voice, BatchVoice) or not voice.batches:
        return None
    batcher = TtsBatcher(voice, window_ms=settings.tts_batch_window_ms,
                         max_batch=settings.tts_batch_max)
    voice.inference = batcher.infer
    return batcher
