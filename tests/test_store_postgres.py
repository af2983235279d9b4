"""The conversation store on PostgreSQL: the same contract as SQLite, on a throwaway server
(Debian's `postgresql` package: initdb + postgres on a free loopback port, trust auth), and the
orchestrator resuming a conversation from it after a restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.store import SessionRecord, StoreError, TurnModel, TurnRecord, open_store
from orchestrator.store_postgres import PostgresStore
from tests.harness import InProcess
from tests.stack import free_port
from tests.test_store import run, whole_turn
from tests.test_turns_inprocess import final


def _bindir() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return versions[-1].parent if versions else None


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user (exec'd)."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *command]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bindir = _bindir()
    if bindir is None or (os.geteuid() == 0 and shutil.which("setpriv") is None):
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="inzwa-pg-"))  # not under pytest's 0700 root-owned dirs
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    port = free_port()
    subprocess.run(_as_server_user([str(bindir / "initdb"), "-D", str(base / "data"), "-A", "trust",
                                    "-U", "inzwa", "--no-sync"]), check=True, capture_output=True,
                   timeout=120)
    server = subprocess.Popen(_as_server_user(
        [str(bindir / "postgres"), "-D", str(base / "data"), "-p", str(port), "-k", str(base),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True, timeout=10).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, "postgres did not start"
            time.sleep(0.2)
        yield f"postgresql://inzwa@127.0.0.1:{port}/postgres"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def arun(coro: object) -> object:
    async def main() -> object:
        return await coro  # type: ignore[misc]

    return asyncio.run(main())


def test_the_store_contract_on_postgres(postgres_url: str) -> None:
    async def scenario() -> None:
        store = PostgresStore(postgres_url)
        await store.open()
        await store.open()  # idempotent; the migrations ran once
        now = time.time()
        for sid, principal, active in (("pg-a", "alice", now), ("pg-b", "bob", now),
                                       ("pg-old", "alice", now - 40 * 86400)):
            await store.start_session(SessionRecord(sid, principal, "en", created=active,
                                                    last_active=active))
        await store.record_turn(TurnRecord("pg-a", 1, "remember pineapple", "One two. Three.",
                                           language="en", confidence=0.8, timings={"tts_end": 9.5},
                                           models=[TurnModel("llm", "m", "1", "ab" * 32)]))
        await store.set_heard("pg-a", 1, "One two.")
        messages = await store.messages("pg-a")
        assert [(m.role, m.text, m.heard, m.confidence) for m in messages] == [
            ("user", "remember pineapple", None, 0.8), ("assistant", "One two. Three.", "One two.", None)]
        assert messages[1].timings == {"tts_end": 9.5}
        assert (await store.turn_models("pg-a"))[1][0].sha256 == "ab" * 32
        record = await store.get_session("pg-a")
        assert record is not None and record.turns == 1 and record.principal == "alice"
        mine, total = await store.list_sessions("alice", 10, 0)
        assert [r.session_id for r in mine] == ["pg-a", "pg-old"] and total == 2
        await store.end_session("pg-old", "closed")
        assert await store.purge(now - 30 * 86400) == 1
        assert await store.delete_session("pg-a") and not await store.delete_session("pg-a")
        assert await store.get_session("pg-a") is None and await store.messages("pg-a") == []
        everyone, _ = await store.list_sessions(None, 10, 0)
        assert [r.session_id for r in everyone] == ["pg-b"]
        await store.close()

    arun(scenario())


def test_the_orchestrator_resumes_from_postgres_after_a_restart(postgres_url: str, tmp_path: Path) -> None:
    async def first_life(h: InProcess) -> None:
        await whole_turn(h, 1, "remember mango", "I will.")

    async def second_life(h: InProcess) -> object:
        return await final(h, 2, "what was it")

    run(InProcess(tmp_path, db_url=postgres_url), first_life)
    request = run(InProcess(tmp_path, db_url=postgres_url), second_life)
    assert [(m.role, m.content) for m in request.messages][1:] == [  # type: ignore[attr-defined]
        ("user", "remember mango"), ("assistant", "I will."), ("user", "what was it")]
    assert not (tmp_path / "inzwa.db").exists()  # nothing went to SQLite


def test_an_unreachable_server_is_a_clear_error_at_start(tmp_path: Path) -> None:
    url = f"postgresql://inzwa:secret@127.0.0.1:{free_port()}/postgres"
    h = InProcess(tmp_path, db_url=url, store_busy_timeout_s=1.0)
    with pytest.raises(StoreError, match="cannot be used") as raised:
        arun(h.orchestrator.serve(asyncio.Event()))
    assert "secret" not in str(raised.value)  # the password is never in the message
    with pytest.raises(StoreError, match="mysql"):
        open_store(h.settings.model_copy(update={"db_url": "mysql://x"}))
