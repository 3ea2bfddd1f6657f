"""The state store: one contract suite run against every backend, races between processes, and
encryption at rest (no token in the clear in the SQLite files or in Redis)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import multiprocessing
import os
import socket
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet

import state.crypto
import state.sqlite
from state import StateError, open_store
from state.crypto import fernet_for, fernet_from_file
from state.memory import MemoryStore
from state.redis import PREFIX

SECRET = Fernet.generate_key().decode()
TOKEN = "eyJhbGciOi-known-token-Zq81"
TTL = 0.15  # seconds: short lives, so expiry tests stay fast
LAPSE = 0.3  # long enough a wait for a TTL to pass, with room for a slow machine


# --- Backends -------------------------------------------------------------------------------


@pytest.fixture
def raw_redis(redis_server):
    """A plain client on the test Redis, emptied first: what an operator would see in it."""
    with redis.Redis.from_url(redis_server) as client:
        client.flushdb()
        yield client


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"  # an absolute path: the //// spelling


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        opened = open_store("memory://", "", tmp_path / "unused.sqlite3")
    elif request.param == "sqlite":
        opened = open_store(sqlite_url(tmp_path / "state.sqlite3"), "", tmp_path / "unused.sqlite3")
    else:
        request.getfixturevalue("raw_redis")  # an empty Redis for each test
        opened = open_store(request.getfixturevalue("redis_server"), SECRET, tmp_path / "unused.sqlite3")
    yield opened
    opened.close()


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request, tmp_path):
    """(url, secret) of a store several processes or hosts share."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "shared" / "state.sqlite3"), ""
    request.getfixturevalue("raw_redis")
    return request.getfixturevalue("redis_server"), SECRET


def increment(value: dict | None) -> dict:
    return {"n": (value or {"n": 0})["n"] + 1}


# --- The contract, for every backend --------------------------------------------------------


def test_values_are_put_read_and_deleted(store):
    assert store.get("account:qwen:1") is None
    store.put("account:qwen:1", {"token": TOKEN, "n": [1, 2]})
    assert store.get("account:qwen:1") == {"token": TOKEN, "n": [1, 2]}
    store.put("account:qwen:1", {"token": "newer"})
    assert store.get("account:qwen:1") == {"token": "newer"}
    store.delete("account:qwen:1")
    store.delete("account:qwen:1")  # absent already: no error
    assert store.get("account:qwen:1") is None


def test_a_value_read_is_a_copy(store):
    store.put("k", {"list": [1]})
    store.get("k")["list"].append(2)
    assert store.get("k") == {"list": [1]}


def test_keys_locks_and_groups_live_apart(store):
    store.put("x", {"v": 1})
    assert store.acquire("x", "owner-a", 10)
    assert store.try_lease("x", "member-a", 1, 10)
    assert store.get("x") == {"v": 1}
    assert (store.lock_holder("x"), store.count_leases("x")) == ("owner-a", 1)


def test_values_expire(store):
    store.put("short", {"v": 1}, ttl=TTL)
    store.put("forever", {"v": 2})
    store.update("updated", increment, ttl=TTL)
    assert store.get("short") == {"v": 1}
    assert store.get("updated") == {"n": 1}
    time.sleep(LAPSE)
    assert (store.get("short"), store.get("updated"), store.take("short")) == (None, None, None)
    assert store.get("forever") == {"v": 2}
    assert store.update("updated", increment) == {"n": 1}  # a lapsed value is gone, not resumed


def test_take_gets_and_deletes(store):
    store.put("code", {"v": 1})
    assert store.take("code") == {"v": 1}
    assert store.take("code") is None
    assert store.get("code") is None


def test_take_hands_a_value_to_exactly_one_thread(store):
    store.put("code", {"v": 1})
    barrier = threading.Barrier(8)

    def take() -> dict | None:
        barrier.wait()
        return store.take("code")

    assert sorted(map(str, run_threads(take, 8))) == ["None"] * 7 + ["{'v': 1}"]


def test_update_creates_changes_and_deletes(store):
    assert store.update("count", increment) == {"n": 1}
    assert store.update("count", increment) == {"n": 2}
    assert store.get("count") == {"n": 2}
    assert store.update("count", lambda value: None) is None
    assert store.get("count") is None


def test_update_is_atomic_between_threads(store):
    def add_fifty() -> None:
        for _ in range(50):
            store.update("count", increment)

    run_threads(add_fifty, 4)
    assert store.get("count") == {"n": 200}


def test_a_failing_change_leaves_the_value_and_the_store_usable(store):
    store.put("count", {"n": 1})

    def fail(value: dict | None) -> dict:
        raise ValueError("no")

    with pytest.raises(ValueError):
        store.update("count", fail)
    assert store.update("count", increment) == {"n": 2}


def test_a_lock_has_one_holder_and_only_it_releases(store):
    assert store.lock_holder("refresh") is None
    assert store.acquire("refresh", "owner-a", 10)
    assert not store.acquire("refresh", "owner-b", 10)
    store.release("refresh", "owner-b")  # not its lock: nothing happens
    assert store.lock_holder("refresh") == "owner-a"
    assert store.acquire("refresh", "owner-a", 10)  # the holder renews
    store.release("refresh", "owner-a")
    assert store.lock_holder("refresh") is None
    assert store.acquire("refresh", "owner-b", 10)


def test_leases_stop_at_the_limit(store):
    assert [store.try_lease("qwen", m, 2, 10) for m in ("a", "b", "c")] == [True, True, False]
    assert store.try_lease("qwen", "a", 2, 10)  # a member already in renews, even when full
    assert store.count_leases("qwen") == 2
    store.drop_lease("qwen", "a")
    store.drop_lease("qwen", "a")  # absent already: no error
    assert store.count_leases("qwen") == 1
    assert store.try_lease("qwen", "c", 2, 10)
    assert store.count_leases("other") == 0


def test_limit_zero_means_no_limit(store):
    assert all(store.try_lease("free", f"m{i}", 0, 10) for i in range(20))
    assert store.count_leases("free") == 20


def test_locks_and_leases_lapse(store):
    assert store.acquire("refresh", "owner-a", TTL)
    assert store.try_lease("qwen", "a", 1, TTL)
    time.sleep(LAPSE)
    assert (store.lock_holder("refresh"), store.count_leases("qwen")) == (None, 0)
    assert store.acquire("refresh", "owner-b", 10)
    store.release("refresh", "owner-a")  # the lapsed owner cannot free the lock passed on
    assert store.lock_holder("refresh") == "owner-b"
    assert store.try_lease("qwen", "b", 1, 10)


def run_threads(target, count: int) -> list:
    results: list = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    return results


# --- Several processes (SQLite) and several hosts (Redis) -----------------------------------


RACERS = 5  # processes kept for the races; spawning is slow, so they serve every race


@pytest.fixture(scope="module")
def racers():
    """Worker processes of their own (spawned, as on any platform), kept for the module."""
    with multiprocessing.get_context("spawn").Pool(RACERS) as pool:
        for _ in range(20):  # until every worker is up: a busy one takes no second task
            if len(set(pool.map(_pid_after_a_while, range(RACERS), chunksize=1))) == RACERS:
                break
        yield pool


def _pid_after_a_while(_: int) -> int:
    time.sleep(0.2)
    return os.getpid()


def _run_job(job, url: str, secret: str, start_at: float, args: tuple):
    """In a worker: wait for the agreed moment, open the store (racing to create it), run one job."""
    time.sleep(max(0.0, start_at - time.time()))
    opened = open_store(url, secret, Path("unused.sqlite3"))
    try:
        return job(opened, *args)
    finally:
        opened.close()


def race(racers, job, url: str, secret: str, args_per_process: list[tuple]) -> list:
    """Run ``job(store, *args)`` once per args in as many processes, all starting at one moment."""
    assert len(args_per_process) <= RACERS
    start_at = time.time() + 0.1  # every worker has its job by then, and is sleeping
    jobs = [(job, url, secret, start_at, args) for args in args_per_process]
    return racers.starmap(_run_job, jobs, chunksize=1)


def _put_own(store, name: str) -> str:
    store.put(name, {"token": TOKEN + name})
    return name


def _take(store) -> dict | None:
    return store.take("code")


def _acquire(store, owner: str) -> bool:
    return store.acquire("refresh", owner, 30)


def _increment(store, times: int) -> None:
    for _ in range(times):
        store.update("count", increment)


def _lease_once(store, member: str) -> bool:
    return store.try_lease("once", member, 2, 30)


def _lease_in_turns(store, member: str) -> tuple[int, int]:
    """Lease, look at the count, let go, many times: (grants, the largest count seen)."""
    grants, largest = 0, 0
    for _ in range(40):
        if store.try_lease("turns", member, 2, 30):
            grants += 1
            largest = max(largest, store.count_leases("turns"))
            store.drop_lease("turns", member)
    return grants, largest


def test_processes_opening_a_new_store_at_once_share_one_key(shared_url, racers):
    url, secret = shared_url
    names = race(racers, _put_own, url, secret, [(f"account:{i}",) for i in range(4)])
    with contextlib.closing(open_store(url, secret, Path("unused.sqlite3"))) as opened:
        assert {name: opened.get(name) for name in names} == {name: {"token": TOKEN + name} for name in names}


def test_take_between_processes_is_exactly_once(shared_url, racers):
    url, secret = shared_url
    with contextlib.closing(open_store(url, secret, Path("unused.sqlite3"))) as opened:
        opened.put("code", {"v": 1})
    assert sorted(map(str, race(racers, _take, url, secret, [()] * 4))) == ["None"] * 3 + ["{'v': 1}"]


def test_one_process_of_several_gets_the_lock(shared_url, racers):
    url, secret = shared_url
    assert sorted(race(racers, _acquire, url, secret, [(f"owner-{i}",) for i in range(4)])) == [False] * 3 + [True]


def test_updates_from_two_processes_all_count(shared_url, racers):
    url, secret = shared_url
    race(racers, _increment, url, secret, [(200,), (200,)])
    with contextlib.closing(open_store(url, secret, Path("unused.sqlite3"))) as opened:
        assert opened.get("count") == {"n": 400}


def test_of_processes_leasing_at_once_only_the_limit_get_in(shared_url, racers):
    url, secret = shared_url
    assert sorted(race(racers, _lease_once, url, secret, [(f"m{i}",) for i in range(5)])) == [False] * 3 + [True] * 2


def test_leases_taken_in_turns_by_processes_never_pass_the_limit(shared_url, racers):
    url, secret = shared_url
    reports = race(racers, _lease_in_turns, url, secret, [(f"m{i}",) for i in range(4)])
    # SQLite's busy wait is not fair: one process may get no turn at all, so only the total counts.
    assert sum(grants for grants, _ in reports) > 0
    assert max(largest for _, largest in reports) <= 2


def test_two_redis_stores_share_state_as_two_hosts_would(redis_server, raw_redis, tmp_path):
    with (
        contextlib.closing(open_store(redis_server, SECRET, tmp_path / "a")) as a,
        contextlib.closing(open_store(redis_server, SECRET, tmp_path / "b")) as b,
    ):
        a.put("account:qwen:1", {"token": TOKEN})
        assert b.get("account:qwen:1") == {"token": TOKEN}
        assert a.acquire("refresh", "host-a", 10)
        assert not b.acquire("refresh", "host-b", 10)
        assert b.lock_holder("refresh") == "host-a"
        assert a.try_lease("qwen", "a", 1, 10)
        assert not b.try_lease("qwen", "b", 1, 10)
        assert b.take("account:qwen:1") == {"token": TOKEN}
        assert a.get("account:qwen:1") is None
    assert all(key.startswith(PREFIX.encode()) for key in raw_redis.keys("*"))


# --- Encryption at rest ---------------------------------------------------------------------


def sqlite_files(path: Path) -> dict[str, bytes]:
    """The database file and its WAL companions, as bytes on disk."""
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return {f.name: f.read_bytes() for f in files if f.exists()}


def test_sqlite_files_hold_no_token_in_the_clear(tmp_path):
    path = tmp_path / "state.sqlite3"
    opened = open_store(sqlite_url(path), "", tmp_path / "unused.sqlite3")
    try:
        opened.put("account:qwen:1", {"token": TOKEN})
        opened.update("account:qwen:2", lambda value: {"token": TOKEN})
        opened.put("account:qwen:3", {"token": TOKEN}, ttl=60)
        written = b"".join(sqlite_files(path).values())
        assert b"account:qwen:1" in written  # the files read are those the store wrote to
        assert TOKEN.encode() not in written
    finally:
        opened.close()
    assert TOKEN.encode() not in b"".join(sqlite_files(path).values())


def test_redis_holds_no_token_in_the_clear(redis_server, raw_redis, tmp_path):
    with contextlib.closing(open_store(redis_server, SECRET, tmp_path / "unused.sqlite3")) as opened:
        opened.put("account:qwen:1", {"token": TOKEN})
        opened.update("account:qwen:2", lambda value: {"token": TOKEN}, ttl=60)
        opened.acquire("refresh", "owner-a", 60)
        opened.try_lease("qwen", "member-a", 2, 60)
    raw = {key: raw_value(raw_redis, key) for key in raw_redis.scan_iter()}
    assert set(raw) == {
        PREFIX.encode() + k for k in (b"kv:account:qwen:1", b"kv:account:qwen:2", b"lock:refresh", b"lease:qwen")
    }
    assert not any(TOKEN.encode() in value for value in raw.values())
    assert TOKEN.encode() in Fernet(SECRET).decrypt(raw[PREFIX.encode() + b"kv:account:qwen:1"])  # sealed with it


def raw_value(client: redis.Redis, key: bytes) -> bytes:
    if client.type(key) == b"zset":
        return b" ".join(member for member, _ in client.zrange(key, 0, -1, withscores=True))
    return client.get(key)


def test_the_sqlite_files_and_key_are_private_whatever_the_umask(tmp_path):
    path = tmp_path / "state.sqlite3"
    old_umask = os.umask(0)
    try:
        opened = open_store(sqlite_url(path), "", tmp_path / "unused.sqlite3")
    finally:
        os.umask(old_umask)
    try:
        opened.put("k", {"v": 1})
        modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in sqlite_files(path)}
        modes["state.key"] = stat.S_IMODE((tmp_path / "state.key").stat().st_mode)
    finally:
        opened.close()
    assert modes == {"state.sqlite3": 0o600, "state.sqlite3-wal": 0o600, "state.sqlite3-shm": 0o600, "state.key": 0o600}


def test_the_generated_key_is_kept_and_reused(tmp_path):
    path = tmp_path / "state.sqlite3"
    with contextlib.closing(open_store(sqlite_url(path), "", path)) as opened:
        opened.put("k", {"token": TOKEN})
    key = (tmp_path / "state.key").read_bytes()
    Fernet(key)  # a real Fernet key
    with contextlib.closing(open_store(sqlite_url(path), "", path)) as reopened:
        assert reopened.get("k") == {"token": TOKEN}
    assert (tmp_path / "state.key").read_bytes() == key


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_state_sealed_under_another_secret_reads_as_absent_with_one_warning(backend, tmp_path, caplog, request):
    url = sqlite_url(tmp_path / "state.sqlite3") if backend == "sqlite" else request.getfixturevalue("redis_server")
    if backend == "redis":
        request.getfixturevalue("raw_redis")
    with contextlib.closing(open_store(url, "the old secret, long and random enough", tmp_path)) as old:
        old.put("a", {"token": TOKEN})
        old.put("b", {"token": TOKEN})
    with contextlib.closing(open_store(url, "a new secret, long and random as well", tmp_path)) as new:
        with caplog.at_level(logging.WARNING, logger="reverse_api"):
            assert (new.get("a"), new.take("b"), new.update("a", increment)) == (None, None, {"n": 1})
        assert new.get("a") == {"n": 1}  # overwritten under the new secret
    warnings = [r.getMessage() for r in caplog.records if r.name == "reverse_api"]
    assert len(warnings) == 1 and "STATE_SECRET changed" in warnings[0], warnings


def test_a_fernet_key_is_used_as_is_and_other_secrets_are_stretched():
    token = fernet_for(SECRET).encrypt(b"x")
    assert Fernet(SECRET).decrypt(token) == b"x"
    phrase = "any long random string an operator made up"
    stretched = Fernet(base64.urlsafe_b64encode(hashlib.sha256(phrase.encode()).digest()))
    assert stretched.decrypt(fernet_for(phrase).encrypt(b"y")) == b"y"
    with pytest.raises(StateError, match="STATE_SECRET"):
        fernet_for("")


def test_a_key_file_caught_half_written_is_waited_for(tmp_path):
    path = tmp_path / "state.key"
    path.touch()  # another process created it and has yet to write
    key = Fernet.generate_key()
    writer = threading.Timer(0.1, path.write_bytes, args=(key,))
    writer.start()
    try:
        fernet = fernet_from_file(path)
    finally:
        writer.join()
    assert Fernet(key).decrypt(fernet.encrypt(b"z")) == b"z"


def test_a_key_file_that_never_holds_a_key_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(state.crypto, "KEY_FILE_WAIT", 0.1)
    path = tmp_path / "state.key"
    path.write_text("not a key")
    with pytest.raises(StateError, match="does not hold a Fernet key"):
        fernet_from_file(path)


# --- Opening --------------------------------------------------------------------------------


def test_an_empty_url_opens_sqlite_at_the_default_path(tmp_path):
    default = tmp_path / "state.sqlite3"
    with contextlib.closing(open_store("", "", default)) as opened:
        opened.put("k", {"v": 1})
    assert default.is_file() and (tmp_path / "state.key").is_file()


def test_sqlite_urls_take_relative_and_absolute_paths(tmp_path, monkeypatch):
    """A relative path is relative to the app's folder (the default file's), not the working directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with contextlib.closing(open_store("sqlite:///relative/dir/a.sqlite3", "", tmp_path / "unused")) as opened:
        opened.put("k", {"v": 1})
    assert not (elsewhere / "relative").exists()
    absolute = f"sqlite:///{tmp_path}/absolute/b.sqlite3"
    assert absolute.startswith("sqlite:////")
    with contextlib.closing(open_store(absolute, "", tmp_path / "unused")) as opened:
        opened.put("k", {"v": 2})
    assert (tmp_path / "relative" / "dir" / "a.sqlite3").is_file()
    assert (tmp_path / "absolute" / "b.sqlite3").is_file()
    assert not (tmp_path / "unused").exists()


def test_memory_url_opens_the_memory_store(tmp_path):
    assert isinstance(open_store("memory://", "", tmp_path / "unused"), MemoryStore)


@pytest.mark.parametrize(
    "url",
    [
        "postgres://user:hunter2-pass@db/state",
        "sqlite://relative.sqlite3",
        "sqlite:/state.sqlite3",
        "memory",
        "http://127.0.0.1:6379",
        " redis://127.0.0.1:6379/0",
    ],
)
def test_an_unknown_url_lists_the_accepted_forms(url, tmp_path):
    with pytest.raises(StateError) as caught:
        open_store(url, SECRET, tmp_path / "unused")
    message = str(caught.value)
    assert all(
        form in message for form in ("sqlite:///", "sqlite:////", "redis://", "rediss://", "unix://", "memory://")
    )
    assert "hunter2" not in message


def test_sqlite_on_a_folder_is_a_state_error(tmp_path):
    with pytest.raises(StateError, match=str(tmp_path)):
        open_store(sqlite_url(tmp_path), "", tmp_path / "unused")


def test_redis_without_a_secret_asks_for_one(tmp_path):
    with pytest.raises(StateError) as caught:
        open_store("redis://127.0.0.1:6379/0", "", tmp_path / "unused")
    assert "STATE_SECRET" in str(caught.value) and "Fernet.generate_key()" in str(caught.value)


def test_an_unreachable_redis_is_named_without_its_password(tmp_path):
    with socket.socket() as closed:  # bound but not listening: connecting is refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        url = f"redis://:pass-hunter2@127.0.0.1:{port}/0?password=hunter2-again"
        with pytest.raises(StateError) as caught:
            open_store(url, SECRET, tmp_path / "unused")
    message = str(caught.value)
    assert f"redis://***@127.0.0.1:{port}/0" in message
    assert "hunter2" not in message


# --- SQLite housekeeping --------------------------------------------------------------------


def test_expired_rows_are_swept_on_a_later_write(tmp_path):
    path = tmp_path / "state.sqlite3"
    with contextlib.closing(open_store(sqlite_url(path), "", path)) as opened:
        opened.put("old", {"v": 1}, ttl=TTL)
        opened.acquire("lock", "owner", TTL)
        opened.try_lease("group", "member", 0, TTL)
    time.sleep(LAPSE)
    with contextlib.closing(open_store(sqlite_url(path), "", path)) as opened:
        opened.put("new", {"v": 2})  # a new process's first write sweeps
    with contextlib.closing(sqlite3.connect(path)) as raw:
        rows = [raw.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in ("kv", "locks", "leases")]
    assert rows == [1, 0, 0]


def test_a_forked_process_opens_its_own_connection(tmp_path):
    path = tmp_path / "state.sqlite3"
    with contextlib.closing(open_store(sqlite_url(path), "", path)) as opened:
        opened.put("k", {"v": 1})
        parents = opened._db
        opened._pid = os.getpid() + 1  # as a child after fork() sees it: opened by its parent
        assert opened.get("k") == {"v": 1}
        assert opened._db is not parents
        assert state.sqlite._INHERITED[-1] is parents
        state.sqlite._INHERITED.pop().close()  # a real child leaves it open; here it is ours to close
