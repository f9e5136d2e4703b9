"""Real `simdex serve` processes for end-to-end tests: start, wait for the gRPC health check, stop, kill.

Every process started through a `Procs` is killed (SIGKILL) by `Procs.cleanup()`, which the `procs` fixture in
test_e2e.py runs as a finalizer, whatever the test did. Output goes to a log file (never a pipe a test could
forget to drain) whose tail is shown in failure messages.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

READY_TIMEOUT = 30.0  # seconds for a server to answer its health check (imports take ~1 s here)
PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _LIBC = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it if the test runner dies (no orphaned servers)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # no busy-waiting OpenMP threads on a 2-core machine
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("SIMDEX_TARGET", None)
    return env


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (start() retries if it was taken since)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_check(target: str, *, root_certificates: bytes | None = None, timeout: float = 2.0):
    """The standard grpc.health.v1 Check for service "" -> HealthCheckResponse (raises grpc.RpcError)."""
    # A channel of its own subchannels: gRPC shares them process-wide, and one that saw "connection refused"
    # while the server was starting would make the next probes wait out its reconnect backoff (1 s, 1.6 s, ...).
    options = [("grpc.use_local_subchannel_pool", 1)]
    if root_certificates is not None:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)


class ServerProc:
    """One `python -m simdex serve` process."""

    def __init__(self, data: Path, log: Path, port: int, args: list[str], root_certificates: bytes | None,
                 host: str | None):
        self.data, self.log, self.port, self.args = data, log, port, args
        self.root_certificates = root_certificates
        self.host = host or "127.0.0.1"
        probe = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # a wildcard bind answers on loopback
        self.target = f"[{probe}]:{port}" if ":" in probe else f"{probe}:{port}"
        cmd = [sys.executable, "-m", "simdex", "serve", "--data", str(data), "--port", str(port), *args]
        if host is not None:
            cmd[4:4] = ["--host", host]
        self.cmd = cmd
        self._logfh = open(log, "ab")  # noqa: SIM115 - closed in close_log()
        self.popen = subprocess.Popen(cmd, stdout=self._logfh, stderr=subprocess.STDOUT, env=server_env(),
                                      cwd=str(log.parent), preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until the health check answers SERVING; raises (with the log) if the process exits first."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerExited(self)
            try:
                r = health_check(self.target, root_certificates=self.root_certificates, timeout=1.0)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = f"status {r.status}"
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(0.05)
        raise TimeoutError(f"server {self.cmd} not ready after {timeout}s (last: {last})\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> int:
        """SIGKILL and reap. Returns the exit status (-9 unless it had already exited)."""
        self.signal(signal.SIGKILL)
        rc = self.popen.wait(timeout=30)
        self.close_log()
        return rc

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; SIGKILL (and raise) if it does not exit within `timeout`."""
        self.signal(signal.SIGTERM)
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"server did not stop within {timeout}s of SIGTERM\n{self.log_tail()}") from None
        self.close_log()
        return rc

    def close_log(self) -> None:
        if not self._logfh.closed:
            self._logfh.close()


class ServerExited(RuntimeError):
    def __init__(self, proc: ServerProc):
        self.proc = proc
        super().__init__(f"server exited with {proc.popen.returncode} before it was ready: {proc.cmd}\n"
                         f"{proc.log_tail()}")


class Procs:
    """Starts servers in `workdir` and remembers every process, so that cleanup() can kill them all."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[ServerProc] = []
        self._n = 0

    def start(self, data: Path, *args: str, host: str | None = None, root_certificates: bytes | None = None,
              ready: bool = True) -> ServerProc:
        """A ready server on a fresh port (retried on a port someone took in between)."""
        for attempt in range(3):
            self._n += 1
            proc = ServerProc(data, self.workdir / f"server-{self._n}.log", free_port(), list(args),
                              root_certificates, host)
            self.started.append(proc)
            if not ready:
                return proc
            try:
                proc.wait_ready()
                return proc
            except ServerExited:
                if attempt < 2 and "bind" in proc.log_text().lower():
                    continue
                raise
        raise AssertionError("unreachable")

    def cleanup(self) -> None:
        for proc in self.started:
            try:
                if proc.alive():
                    proc.kill()
                else:
                    proc.close_log()
            except Exception:  # noqa: BLE001 - keep killing the others
                pass


def run_cli(*args: str, cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`python -m simdex ARGS...` -> CompletedProcess with text stdout/stderr."""
    return subprocess.run([sys.executable, "-m", "simdex", *args], cwd=str(cwd), env=server_env(),
                          capture_output=True, text=True, timeout=timeout)
