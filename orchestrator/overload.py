"""The overload ladder: how the orchestrator degrades when more is asked than the LLM can serve.

The load is the number of LLM requests in flight (the sessions' turns still generating, a
speculative early reply included, and REST chat jobs) per READY LLM generation slot: a local
llama.cpp instance serves one request at a time, a remote or batching engine several. It is
exact and free (the orchestrator holds every one of those requests), and it is what a new turn
waits behind: at load N its first token comes after about N generations. (The workers' heartbeat
`busy` says the same a second late; the ASR's own backlog already sheds its partials.)

Levels, only ever entered in this order, each with its threshold in settings
(`overload_*_at`, 0 turns a level off):

  0 normal
  1 fewer partials: every session's ASR is asked for no partials (SessionConfig.partials); the
    re-decoding of the growing utterance is the ASR's largest cost, and on a shared CPU the
    LLM gets it. Finals, pause hypotheses and end-of-turn decisions go on.
  2 shorter replies: a new turn's reply budget is `overload_reply_tokens` (fewer tokens to
    generate and to speak, so the queue drains sooner).
  3 refusal: a new turn is answered at once with the language pack's spoken "busy" line and an
    `overloaded` error event; it is stored and remembered like any other turn, never dropped.

Up at once to the highest level the load reaches; down one level per `overload_hold_s`, and only
when the load is below the level's threshold x (1 - `overload_hysteresis`), so it does not flap.
(A "smaller model" level is not built: only one LLM model is loaded per worker.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from common.languages.base import LanguagePack
from common.metrics import OVERLOAD_ACTIONS, OVERLOAD_ENTERED, OVERLOAD_LEVEL
from common.settings import Settings
from orchestrator.session import Session, TurnState

log = logging.getLogger(__name__)

LEVELS = ("normal", "fewer_partials", "shorter_replies", "refusing")
NORMAL, FEWER_PARTIALS, SHORTER_REPLIES, REFUSING = range(len(LEVELS))
ERROR_CODE = "overloaded"
ERROR_MESSAGE = "the assistant is serving too many people right now; please ask again in a moment"
ACTIONS = ("partials_off", "partials_on", "shorter_reply", "refused")  # inzwa_overload_actions_total
LOCAL_ONE_AT_A_TIME = {"llama-cpp"}  # engines that generate one request at a time per instance

Load = Callable[[], float]
PartialsSwitch = Callable[[bool], Awaitable[None]]


def slots(infos: Iterable[dict[str, str]], settings: Settings) -> int:
    """Generation slots of the READY LLM instances (their `info`): an announced `concurrency`,
    else 1 for a local one-at-a-time engine, else the configured `llm_concurrency`."""
    total = 0
    for info in infos:
        announced = info.get("concurrency", "")
        if announced.isdigit() and int(announced) > 0:
            total += int(announced)
        else:
            total += 1 if info.get("engine") in LOCAL_ONE_AT_A_TIME else settings.llm_concurrency
    return total


def llm_load(sessions: Iterable[Session], llm_jobs: int, infos: Iterable[dict[str, str]],
             settings: Settings) -> float:
    """LLM requests in flight per generation slot (no READY instance counts as one slot: an
    outage is the recovery's business, not a reason to refuse)."""
    generating = sum(1 for s in sessions if s.turn is not None and s.turn.request is not None
                     and s.turn.state is TurnState.GENERATING)
    return (generating + llm_jobs) / max(1, slots(infos, settings))


def busy_line(pack: LanguagePack) -> str:
    """The pack's spoken refusal under overload (a pack without one: its "unavailable" line)."""
    return pack.fallbacks.get("busy") or pack.fallback("unavailable")


class Ladder:
    def __init__(self, settings: Settings, load: Load, *, on_partials: PartialsSwitch | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.thresholds = (settings.overload_partials_at, settings.overload_shorter_at,
                           settings.overload_refuse_at)
        used = [t for t in self.thresholds if t > 0]
        if used != sorted(used):
            raise ValueError("overload thresholds must rise: partials_at <= shorter_at <= refuse_at")
        self.hysteresis = settings.overload_hysteresis
        self.hold_s = settings.overload_hold_s
        self.reply_tokens_cap = settings.overload_reply_tokens
        self._load, self._on_partials, self._clock = load, on_partials, clock
        self.level = NORMAL
        self.load = 0.0  # as last measured
        self.since = clock()  # when the level last changed
        OVERLOAD_LEVEL.set(NORMAL)
        for action in ACTIONS:  # at zero from the start: "never refused" reads 0, not missing
            OVERLOAD_ACTIONS.labels(action)
        for name in LEVELS[1:]:
            OVERLOAD_ENTERED.labels(name)

    def _does(self, level: int, at: int) -> bool:
        """Does `level` take the action of level `at` (reached, and that level not off)?"""
        return level >= at and self.thresholds[at - 1] > 0

    @property
    def partials_on(self) -> bool:
        return not self._does(self.level, FEWER_PARTIALS)

    async def update(self) -> int:
        """Measure the load, move the level, act on a change; the level now."""
        self.load = self._load()
        target = self._target(self.load)
        if target != self.level:
            await self._move(target)
        return self.level

    def _reached(self, load: float, factor: float = 1.0) -> int:
        """The highest level whose threshold (x factor) the load reaches."""
        return max((lvl for lvl, t in enumerate(self.thresholds, 1) if 0 < t * factor <= load),
                   default=NORMAL)

    def _target(self, load: float) -> int:
        up = self._reached(load)
        if up > self.level:
            return up
        if self._clock() - self.since < self.hold_s:
            return self.level  # held: a level lasts at least hold_s
        if self._reached(load, 1.0 - self.hysteresis) >= self.level:
            return self.level
        lower = self.level - 1  # down one step at a time (over a level that is off)
        while lower > NORMAL and self.thresholds[lower - 1] <= 0:
            lower -= 1
        return lower

    async def _move(self, level: int) -> None:
        old, self.level, self.since = self.level, level, self._clock()
        OVERLOAD_LEVEL.set(level)
        if level > old:
            for entered in range(old + 1, level + 1):  # passing a level counts as entering it
                if self.thresholds[entered - 1] > 0:
                    OVERLOAD_ENTERED.labels(LEVELS[entered]).inc()
        log.warning("overload level changed", extra={"from": LEVELS[old], "to": LEVELS[level],
                                                      "load": round(self.load, 2)})
        was_off, off = self._does(old, FEWER_PARTIALS), self._does(level, FEWER_PARTIALS)
        if was_off != off and self._on_partials is not None:
            await self._on_partials(not off)

    def reply_tokens(self, wanted: int) -> int:
        """A new turn's reply budget at this level (counted when it is cut)."""
        if self._does(self.level, SHORTER_REPLIES) and wanted > self.reply_tokens_cap:
            OVERLOAD_ACTIONS.labels("shorter_reply").inc()
            return self.reply_tokens_cap
        return wanted

    def refused(self) -> None:
        """A new turn was refused at this level (counted)."""
        OVERLOAD_ACTIONS.labels("refused").inc()

    @property
    def refusing(self) -> bool:
        return self._does(self.level, REFUSING)
