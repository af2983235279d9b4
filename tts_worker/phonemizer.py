"""Text to IPA phonemes through the `espeak-ng` executable, the way Piper voices expect them.

espeak-ng is GPL: it is only ever run as a separate program (never imported, linked or loaded
with ctypes). One long-lived `espeak-ng -q --ipa -v VOICE` process reads text from stdin; with
neither `--stdin` nor `-f` it synthesises each input line on its own and flushes stdout after
each, which makes it usable as a request/response server. Spawning a fresh process costs ~25 ms
(it loads the voice's dictionary every time); a request to the warm process costs a few ms.

espeak-ng drops punctuation from its IPA and starts a new output line at every clause it finds,
but Piper voices were trained on IPA with the clause punctuation kept (`,` `;` `:` followed by a
space, `.` `!` `?` at sentence ends) and use it for prosody. So the text is split into clauses
here, each clause goes to espeak-ng as its own line, followed by a sentinel line whose known IPA
marks where that clause's output ends, and the punctuation is put back between the clauses.

Flags (espeak-ng 1.51): `--ipa` writes plain IPA; `--ipa=1` puts "_" between phonemes, `=2` tie
bars (U+0361), `=3` zero-width joiners (U+200D), which other builds and the library API also
emit. Format characters are stripped whatever the build does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import shutil
import subprocess
import threading
import time
import unicodedata
import weakref
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_VOICE = "en-us"
# A made-up word: espeak-ng spells it out as letters, a line no real clause turns into.
_SENTINEL = "qxzqj"
# espeak-ng reads stdin lines with a 1000-byte buffer; a longer line would be cut mid-word.
_MAX_LINE_BYTES = 900

_MARKDOWN = re.compile(r"[*#`_~|<>\[\]{}\\^]+")
_DASHES = re.compile(r"\s*[\u2013\u2014]\s*|\s+-{1,2}\s+")
_SPACES = re.compile(r"\s+")
_BULLETS = re.compile(r"^\s*[-+]\s+", re.MULTILINE)
# A clause ends at punctuation followed by a space or the end of the text, so that "3.5",
# "1,000" and "a.m." stay inside their clause.
_BOUNDARY = re.compile(r"[.!?\u2026]+|[,;:]")
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "approx",
     "dept", "fig", "inc", "ltd", "mt"}
)
# espeak-ng marks words it reads with another language's rules as "(fr)bɔ̃ʒˈuːɹ(en)".
_LANGUAGE_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9-]+)?\)")
_SENTENCE_END = ".!?"


class PhonemizerError(RuntimeError):
    """espeak-ng is missing, rejected the voice, died or timed out."""


@dataclass(frozen=True)
class Clause:
    text: str
    terminator: str  # one of , ; : . ! ?


def normalize_text(text: str) -> str:
    """Drop markdown symbols, turn dashes into clause breaks and collapse whitespace."""
    text = unicodedata.normalize("NFC", text)
    # Control characters mean nothing spoken, and a NUL would end espeak-ng's C string early.
    text = "".join(" " if unicodedata.category(ch) == "Cc" and not ch.isspace() else ch
                   for ch in text)
    text = text.replace("\u2026", "...")
    text = _BULLETS.sub("", text)
    text = _MARKDOWN.sub(" ", text)
    text = _DASHES.sub(", ", text)
    text = re.sub(_SENTINEL, " ", text, flags=re.IGNORECASE)
    return _SPACES.sub(" ", text).strip()


def _terminator(punctuation: str) -> str:
    # "?!" still asks a question; "..." and other runs end a sentence with a period.
    for mark in "?!;:,":
        if mark in punctuation:
            return mark
    return "."


def _is_boundary(text: str, match: re.Match[str]) -> bool:
    end = match.end()
    if end < len(text) and not text[end].isspace():
        return False
    if match.group() != ".":
        return True
    word = text[: match.start()].rsplit(" ", 1)[-1].lower()
    is_initial = len(word) == 1 and word.isalpha()  # "J. K. Rowling"
    return not is_initial and word not in _ABBREVIATIONS


def split_clauses(text: str) -> list[Clause]:
    """Clauses of normalized text with their terminators; an unterminated tail gets '.'."""
    clauses: list[Clause] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if not _is_boundary(text, match):
            continue
        body = text[start : match.start()].strip()
        start = match.end()
        if body:
            clauses.append(Clause(body, _terminator(match.group())))
    tail = text[start:].strip()
    if tail:
        # espeak-ng ends the text with a full stop, so Piper's training data did too.
        clauses.append(Clause(tail, "."))
    return clauses


def clean_ipa(ipa: str) -> str:
    """Remove what is not a phoneme (ZWJ and other format marks, language switches)."""
    ipa = _LANGUAGE_SWITCH.sub("", ipa)
    # NFD splits accented letters into base + combining mark, as Piper's training did.
    ipa = unicodedata.normalize("NFD", ipa)
    kept = (ch for ch in ipa if ch == " " or unicodedata.category(ch)[0] not in "CZ")
    return _SPACES.sub(" ", "".join(kept)).strip()


def join_sentences(clauses: list[Clause], ipa: list[str]) -> list[str]:
    """One IPA string per sentence, clause punctuation kept the way Piper writes it:
    "həlˈoʊ, wˈɜːld." (`,` `;` `:` followed by a space, the sentence's own mark at its end)."""
    sentences: list[str] = []
    parts: list[tuple[str, str]] = []
    for clause, phonemes in zip(clauses, ipa, strict=True):
        if phonemes:  # a clause espeak-ng found nothing to say in leaves no stray mark
            parts.append((phonemes, clause.terminator))
        if clause.terminator in _SENTENCE_END:
            _close_sentence(parts, clause.terminator, sentences)
            parts = []
    _close_sentence(parts, ".", sentences)
    return sentences


def _close_sentence(parts: list[tuple[str, str]], terminator: str,
                    sentences: list[str]) -> None:
    if not parts:
        return
    inner = "".join(f"{phonemes}{mark} " for phonemes, mark in parts[:-1])
    sentences.append(f"{inner}{parts[-1][0]}{terminator}")


def _chunk_line(text: str) -> list[str]:
    """Split a clause into lines espeak-ng reads whole, at spaces."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}".strip()
        if current and len(candidate.encode()) > _MAX_LINE_BYTES:
            lines.append(current)
            candidate = word
        current = candidate
    if current:
        lines.append(current)
    return lines


class EspeakPhonemizer:
    """IPA phonemes for each sentence of a text, from a persistent `espeak-ng` process."""

    def __init__(self, voice: str = DEFAULT_VOICE, *, binary: str = "espeak-ng",
                 timeout_s: float = 5.0) -> None:
        executable = shutil.which(binary)
        if executable is None:
            raise PhonemizerError(
                f"the {binary!r} executable was not found on PATH; install it "
                "(Debian/Ubuntu: apt-get install espeak-ng)"
            )
        self.voice = voice or DEFAULT_VOICE
        self.timeout_s = timeout_s
        # -q: no audio; --ipa (not --ipa=1/2/3): IPA without "_", tie or ZWJ separators;
        # -b 1: the input is UTF-8 whatever the locale.
        self._argv = [executable, "-q", "--ipa", "-b", "1", "-v", self.voice]
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        # The sentinel's IPA as a whole output line; ^ does not consume the newline before it,
        # so back-to-back sentinels (a clause with no output at all) still both match.
        self._sentinel = re.compile(rb"^" + re.escape(self._probe_sentinel()) + rb"\n", re.M)

    def _probe_sentinel(self) -> bytes:
        """Check the voice with a one-shot run (its stderr says why it fails) and learn the
        sentinel's IPA line."""
        try:
            done = subprocess.run(self._argv, input=f"{_SENTINEL}\n".encode(),
                                  capture_output=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PhonemizerError(f"espeak-ng did not answer in {self.timeout_s} s") from exc
        line = done.stdout.strip()
        if done.returncode != 0 or not line:
            error = done.stderr.decode(errors="replace").strip()
            raise PhonemizerError(f"espeak-ng failed for voice {self.voice!r}: {error}")
        return line

    def phonemize(self, text: str) -> list[str]:
        """One IPA string per sentence of `text`; [] when nothing in it can be spoken."""
        clauses = split_clauses(normalize_text(text))
        if not clauses:
            return []
        raw = self._ask([clause.text for clause in clauses])
        return join_sentences(clauses, [clean_ipa(line) for line in raw])

    def _ask(self, texts: list[str]) -> list[str]:
        """espeak-ng's IPA for each text (its output lines for one text joined by spaces)."""
        lines = [line for text in texts for line in (*_chunk_line(text), _SENTINEL)]
        payload = ("\n".join(lines) + "\n").encode()
        with self._lock:
            try:
                output = self._exchange(payload, len(texts))
            except (OSError, PhonemizerError):
                self._stop()  # its state is unknown now; the next call starts a fresh one
                raise
        groups = self._sentinel.split(output)
        if len(groups) != len(texts) + 1 or groups[-1].strip():
            raise PhonemizerError("espeak-ng output does not line up with its input")
        return [" ".join(group.decode(errors="replace").split()) for group in groups[:-1]]

    def _exchange(self, payload: bytes, expected: int) -> bytes:
        for attempt in (1, 2):
            try:
                return self._communicate(self._process(), payload, expected)
            except (BrokenPipeError, EOFError) as exc:
                # The process died (killed, OOM): one retry with a fresh one.
                self._stop()
                if attempt == 2:
                    raise PhonemizerError("espeak-ng exited while phonemizing") from exc
                log.warning("espeak-ng process exited; restarting it")
        raise AssertionError("unreachable")

    def _process(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(self._argv, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert self._proc.stdin is not None
            # Non-blocking writes: a long text must not deadlock against a full stdout pipe.
            os.set_blocking(self._proc.stdin.fileno(), False)
            self._finalizer = weakref.finalize(self, _kill, self._proc)
        return self._proc

    def _communicate(self, proc: subprocess.Popen[bytes], payload: bytes,
                     expected: int) -> bytes:
        assert proc.stdin is not None and proc.stdout is not None
        fd_in, fd_out = proc.stdin.fileno(), proc.stdout.fileno()
        deadline = time.monotonic() + self.timeout_s
        pending, output = memoryview(payload), bytearray()
        while len(self._sentinel.findall(output)) < expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PhonemizerError(f"espeak-ng did not answer in {self.timeout_s} s")
            writers = [fd_in] if pending else []
            readable, writable, _ = select.select([fd_out], writers, [], remaining)
            if writable:
                with contextlib.suppress(BlockingIOError):  # a full pipe: retry after select
                    pending = pending[os.write(fd_in, pending) :]
            if readable:
                chunk = os.read(fd_out, 65536)
                if not chunk:
                    raise EOFError
                output += chunk
        return bytes(output)

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None
        self._finalizer = None

    def close(self) -> None:
        """Stop the espeak-ng process (a later call starts a new one)."""
        with self._lock:
            self._stop()

    def __enter__(self) -> EspeakPhonemizer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    # A finalizer, not __del__: it runs at garbage collection and at interpreter exit.
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
