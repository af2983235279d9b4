"""Kept so existing imports (`bench`, tests) still work: the Piper engine lives in
`tts_worker/engines/piper.py`, the TTS seam in `tts_worker/interface.py`."""

from common.languages.base import Phonemizer
from tts_worker.engines.piper import PiperVoice, VoiceConfig, limit_peak, phonemes_to_ids
from tts_worker.interface import TTS, PhonemeVoice
from tts_worker.pcm import FrameBuffer

__all__ = ["TTS", "FrameBuffer", "PhonemeVoice", "Phonemizer", "PiperVoice", "VoiceConfig",
           "limit_peak", "phonemes_to_ids"]
