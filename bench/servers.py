"""The processes under test: the fake upstream, the service (``python app.py``) and the floor relay
(``floor_relay.py`` under gunicorn), each in its own process group; ``Servers.stop`` ends them all."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from clients import make_session
from common import HOST, ROOT, START_TIMEOUT, STOP_TIMEOUT
from procs import children, group_members


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def provider_copy(qwen: Path, into: Path, index: int, host: str) -> dict[str, str]:
    """``porviders/qwen`` as ``qwen{index}``: its own model names and its own ``QWEN{index}_`` variables,
    so it shadows nothing; returns the secrets to put in the service's environment."""
    folder = into / f"qwen{index}"
    shutil.copytree(qwen, folder)
    for name in ("header.txt", "metadata.json"):
        path = folder / name
        path.write_text(path.read_text().replace("QWEN_", f"QWEN{index}_"))
    meta_path = folder / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    metadata.update(
        host=host,
        scheme="http",
        owned_by=f"bench{index}",
        models=[f"bench{index}-plus", f"bench{index}-max"],
        patterns=[f"bench{index}-*"],
    )
    metadata.pop("models_endpoint", None)  # no model-list look-up per copy at start
    meta_path.write_text(json.dumps(metadata, indent=2))
    return {f"QWEN{index}_TOKEN": f"bench-secret-{index}-xxxxxxxx"}


class Servers:
    """The fake upstream, the service and (with ``floor``) the floor relay.

    ``providers`` is how many provider folders the service is given: ``porviders/qwen`` pointed at
    the fake upstream, plus ``providers - 1`` renamed copies of it with their own secrets."""

    def __init__(self, tmp: Path, service_root: Path = ROOT, floor: bool = False, providers: int = 1) -> None:
        self.tmp = tmp
        self.service_root = service_root  # the checkout whose app.py is served
        self.with_floor = floor
        self.providers = providers
        self.upstream: subprocess.Popen | None = None
        self.service: subprocess.Popen | None = None
        self.floor: subprocess.Popen | None = None
        self.upstream_port = 0
        self.port = 0
        self.floor_port = 0
        self.workers: list[int] = []
        self.floor_workers: list[int] = []
        self.logs: list = []

    def start(self) -> None:
        self._start_upstream()
        self._start_service()
        if self.with_floor:
            self._start_floor()

    def _log(self, name: str):
        log = open(self.tmp / name, "wb")  # noqa: SIM115 - lives as long as the process
        self.logs.append(log)
        return log

    def _start_upstream(self) -> None:
        self.upstream = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "fake_upstream.py"), "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log("upstream.log"),
            start_new_session=True,
        )
        ready, _, _ = select.select([self.upstream.stdout], [], [], START_TIMEOUT)
        line = self.upstream.stdout.readline() if ready else b""
        if not line.startswith(b"ready "):
            raise RuntimeError(f"fake upstream did not start: {line!r}\n{self.log_tail('upstream.log')}")
        self.upstream_port = int(line.split()[1])

    def _start_service(self) -> None:
        providers = self.tmp / "providers"
        qwen = self.service_root / "porviders" / "qwen"
        shutil.copytree(qwen, providers / "qwen")
        meta_path = providers / "qwen" / "metadata.json"
        metadata = json.loads(meta_path.read_text())
        metadata.update(host=f"{HOST}:{self.upstream_port}", scheme="http")
        meta_path.write_text(json.dumps(metadata, indent=2))
        secrets: dict[str, str] = {}
        for index in range(2, self.providers + 1):
            secrets.update(provider_copy(qwen, providers, index, f"{HOST}:{self.upstream_port}"))
        self.port = free_port()
        env = dict(
            os.environ,
            HOST=HOST,
            PORT=str(self.port),
            PROVIDERS_DIR=str(providers),
            QWEN_TOKEN="bench",
            # The default store (SQLite), in the run's own folder rather than beside app.py.
            STATE_URL=f"sqlite:///{self.tmp / 'state.sqlite3'}",
            LOG_LEVEL="WARNING",
            API_KEYS="",  # a developer's .env must not lock the benchmark out (the environment wins)
            **secrets,
        )
        self.service = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=self.service_root,
            env=env,
            stdout=self._log("service.log"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready(self.service, f"{self.base}/health", "service.log", lambda status: status == 200)

    def _start_floor(self) -> None:
        self.floor_port = free_port()
        self.floor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--worker-class=gevent",
                "--workers=1",
                f"--bind={HOST}:{self.floor_port}",
                "--worker-connections=4096",
                "--backlog=4096",
                "--chdir",
                str(ROOT / "bench"),
                "floor_relay:app",
            ],
            cwd=ROOT,
            env=dict(os.environ, FLOOR_UPSTREAM=self.upstream_base),
            stdout=self._log("floor.log"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Any HTTP answer means the worker is up (the one route is POST only).
        self._wait_ready(self.floor, f"{self.floor_base}/v1/chat/completions", "floor.log", lambda status: True)

    def _wait_ready(self, proc: subprocess.Popen, url: str, log: str, ok) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with make_session() as s:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{log[:-4]} exited with {proc.returncode}\n{self.log_tail(log)}")
                try:
                    if ok(s.get(url, timeout=1).status_code):
                        return
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{log[:-4]} did not answer {url}\n{self.log_tail(log)}")
                time.sleep(0.1)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def floor_base(self) -> str:
        return f"http://{HOST}:{self.floor_port}"

    @property
    def upstream_base(self) -> str:
        return f"http://{HOST}:{self.upstream_port}"

    def refresh_workers(self) -> list[int]:
        self.workers = children(self.service.pid)
        if self.floor is not None:
            self.floor_workers = children(self.floor.pid)
        return self.workers

    def pids(self, arm: str = "proxy") -> list[int]:
        """The gunicorn master (``python app.py`` execs it, so it keeps the pid) and its workers;
        for ``arm="floor"`` the floor relay's master and worker."""
        if arm == "floor":
            return [self.floor.pid, *self.floor_workers]
        return [self.service.pid, *self.workers]

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.tmp / name).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    | {line}" for line in text[-lines:])

    def processes(self) -> list[subprocess.Popen]:
        return [proc for proc in (self.service, self.floor, self.upstream) if proc is not None]

    def stop(self, grace: float = STOP_TIMEOUT) -> None:
        stop_all([self], grace)


def stop_all(servers: list[Servers], grace: float = STOP_TIMEOUT) -> None:
    """SIGTERM to every process group at once, up to ``grace`` seconds for them to end, then SIGKILL
    for whatever of the group is left (workers left behind, or a stuck master: the group is ours)."""
    procs = [proc for s in servers for proc in s.processes()]
    for proc in procs:
        _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if group_members(proc.pid):
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)
        if proc.stdout:
            proc.stdout.close()
    for s in servers:
        for log in s.logs:
            log.close()
        s.logs.clear()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
