"""A stateful, confined Python kernel per conversation (jupyter-client + ipykernel).

`Sandbox` starts an ipykernel through `_launcher.py`, which confines it as far as the platform
allows, strongest first:

* ``namespaces`` (running as root): new network, mount, pid, ipc and uts namespaces; a minimal
  root (read-only interpreter and system libraries, the working folder at ``/mnt/data``, a private
  ``/tmp``) entered with ``pivot_root``; the kernel runs as an unprivileged uid with no
  capabilities and ``no_new_privs``.
* ``user-namespace`` (not root, unprivileged user namespaces allowed): the same namespaces and
  root, but the kernel keeps the caller's uid (all capabilities dropped).
* ``none``: no namespaces. As root the kernel still runs as an unprivileged uid in a private
  working folder (so root-only files are unreadable, world-readable ones are not); otherwise it
  runs as the caller.

Always: rlimits (address space, CPU seconds, processes, file size, open files, no core dumps), a
clean environment (no host variables such as API keys), a wall-clock timeout per execution
(interrupt, then restart if the kernel does not stop), and truncated output. The kernel speaks to
us over ZMQ on Unix sockets (``ipc``), which cross the network namespace boundary through a bind-
mounted runtime folder. `Sandbox.report` (`SandboxReport`) says what is and is not enforced; it is
logged when the sandbox starts (a warning when the sandbox is weaker than ``namespaces``).
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

logger = logging.getLogger("functionary.sandbox")

GiB = 1024**3
MiB = 1024**2
DATA_DIR = "/mnt/data"  # where the code interpreter's system prompt says files live
_RUNTIME_INSIDE = "/run/sandbox"
_LAUNCHER = Path(__file__).with_name("_launcher.py")
_SETUP_FAILED = 125
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ETC = ["ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "alternatives", "nsswitch.conf",
        "ssl", "ca-certificates", "fonts", "mime.types", "os-release"]
_SYSTEM_READONLY = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"]

Isolation = Literal["auto", "strict", "none"]
Mode = Literal["namespaces", "user-namespace", "none"]


class SandboxError(RuntimeError):
    """The sandbox could not start (or not with the isolation that was required)."""


class _SetupFailed(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Results and report


@dataclass
class SandboxReport:
    """What the running sandbox enforces (and does not)."""

    mode: Mode
    network_isolated: bool
    filesystem_confined: bool
    filesystem: str
    privileges: str
    memory_limit: Optional[int]
    cpu_limit: Optional[int]
    process_limit: Optional[int]
    file_size_limit: Optional[int]
    timeout: float
    working_dir: Path
    working_dir_inside: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def size(v: Optional[int]) -> str:
            return "none" if v is None else f"{v / GiB:.1f} GiB" if v >= GiB else f"{v // MiB} MiB"

        parts = [
            f"mode={self.mode}",
            f"network isolated={'yes' if self.network_isolated else 'NO'}",
            f"filesystem confined={'yes' if self.filesystem_confined else 'NO'} ({self.filesystem})",
            f"user: {self.privileges}",
            f"memory limit={size(self.memory_limit)} address space per process (RLIMIT_AS)",
            f"cpu limit={self.cpu_limit if self.cpu_limit is not None else 'none'} s per process (RLIMIT_CPU)",
            f"process limit={self.process_limit if self.process_limit is not None else 'none'} (RLIMIT_NPROC)",
            f"file size limit={size(self.file_size_limit)}",
            f"timeout={self.timeout:g} s per execution",
            f"working folder={self.working_dir} (seen as {self.working_dir_inside})",
        ]
        parts += [f"note: {n}" for n in self.notes]
        return "sandbox: " + "; ".join(parts)


@dataclass
class ExecutionResult:
    """One execution. `text` is what goes back to the model (already truncated)."""

    text: str
    status: Literal["ok", "error", "timeout", "restarted"]
    stdout: str = ""
    stderr: str = ""
    result: Optional[str] = None
    error: Optional[str] = None  # "Name: value"
    timed_out: bool = False
    restarted: bool = False  # the kernel was restarted: all state is gone
    truncated: bool = False
    files: list[str] = field(default_factory=list)  # images saved from rich output

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """Keep the head and the tail of `text` within about `limit` characters."""
    if limit <= 0 or len(text) <= limit:
        return text, False
    head = (limit * 2) // 3
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n... [{cut} characters truncated] ...\n{text[-tail:]}", True


# ---------------------------------------------------------------------------------------------
# The sandbox


class Sandbox:
    """A confined, stateful ipykernel. Use `async with Sandbox() as sb: await sb.execute(code)`.

    Args:
        working_dir: host folder the code sees as `/mnt/data` (created privately when omitted and
            removed on close; a given folder is kept, and chowned to the sandbox uid when root).
        timeout: default wall-clock seconds per execution (then interrupt, then restart).
        memory_limit: bytes of address space per process (RLIMIT_AS); None for no limit.
        cpu_limit: CPU seconds per process over the kernel's life (RLIMIT_CPU); None for no limit.
        process_limit: processes and threads of the sandbox user (RLIMIT_NPROC); None for no limit.
        file_size_limit: largest file the code may write (RLIMIT_FSIZE).
        max_output_chars: output kept per execution (head and tail).
        isolation: "auto" (strongest available, falling back with a warning), "strict" (the
            strongest mode or `SandboxError`), "none" (no namespaces; rlimits still apply).
        uid: the unprivileged uid to run as when root (default: a random high uid per sandbox,
            so that the process limit is the sandbox's own).
        readonly_paths: extra host paths made visible read-only (same path inside).
        python: interpreter with ipykernel installed (default: this one).
    """

    def __init__(
        self,
        working_dir: Optional[os.PathLike[str] | str] = None,
        *,
        timeout: float = 60.0,
        memory_limit: Optional[int] = 2 * GiB,
        cpu_limit: Optional[int] = 600,
        process_limit: Optional[int] = 128,
        file_size_limit: Optional[int] = 1 * GiB,
        open_files_limit: Optional[int] = 1024,
        max_output_chars: int = 8000,
        isolation: Isolation = "auto",
        uid: Optional[int] = None,
        readonly_paths: Sequence[str] = (),
        tmp_size: str = "256m",
        python: Optional[str] = None,
        startup_timeout: float = 60.0,
        interrupt_grace: float = 3.0,
    ) -> None:
        self.timeout = timeout
        self.memory_limit = memory_limit
        self.cpu_limit = cpu_limit
        self.process_limit = process_limit
        self.file_size_limit = file_size_limit
        self.open_files_limit = open_files_limit
        self.max_output_chars = max_output_chars
        self.isolation = isolation
        self.readonly_paths = list(readonly_paths)
        self.tmp_size = tmp_size
        self.python = python or sys.executable
        self.startup_timeout = startup_timeout
        self.interrupt_grace = interrupt_grace
        self._given_dir = Path(working_dir).resolve() if working_dir is not None else None
        self._is_root = os.geteuid() == 0
        if uid is None and self._is_root:
            uid = 1_000_000_000 + secrets.randbelow(1 << 24)
        self.uid: Optional[int] = uid if self._is_root else None
        self.gid: Optional[int] = uid if self._is_root else None
        self.report: Optional[SandboxReport] = None
        self._base: Optional[Path] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._client: Any = None
        self._mode: Optional[Mode] = None  # the mode chosen at start (restarts reuse it)
        self._launched: Optional[tuple[Mode, bool]] = None  # what the current process runs as
        self._drop = False
        self._lock = asyncio.Lock()
        self._images = 0
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def working_dir(self) -> Path:
        if self._given_dir is not None:
            return self._given_dir
        if self._base is None:
            raise SandboxError("the sandbox has not started")
        return self._base / "data"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def __aenter__(self) -> "Sandbox":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def start(self) -> SandboxReport:
        """Start the kernel (idempotent); the report of what is enforced."""
        if self._closed:
            raise SandboxError("the sandbox is closed")
        if self.running and self.report is not None:
            return self.report
        self._prepare_dirs()
        failures: list[str] = []
        for mode, drop in self._candidate_modes():
            try:
                await self._launch(mode, drop)
            except _SetupFailed as exc:
                failures.append(f"{mode}{' as uid %s' % self.uid if drop and self.uid is not None else ''}: {exc}")
                await self._kill()
                continue
            self._mode, self._drop = mode, drop
            break
        else:
            raise SandboxError("could not start the sandbox: " + " / ".join(failures))
        assert self.report is not None
        self.report.notes.extend(f"fell back from {f}" for f in failures)
        level = logging.INFO if self.report.mode == "namespaces" else logging.WARNING
        logger.log(level, "%s", self.report.summary())
        return self.report

    async def restart(self) -> SandboxReport:
        """A fresh kernel (all variables lost; the working folder is kept)."""
        await self._kill()
        mode = self._mode
        if mode is None:
            return await self.start()
        notes = self.report.notes if self.report is not None else []
        try:
            await self._launch(mode, self._drop)
        except _SetupFailed as exc:
            await self._kill()
            raise SandboxError(f"could not restart the sandbox: {exc}") from exc
        assert self.report is not None
        self.report.notes = notes
        return self.report

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._kill()
        if self._base is not None:  # holds the working folder unless one was given
            shutil.rmtree(self._base, ignore_errors=True)

    # ------------------------------------------------------------------ execution

    async def execute(self, code: str, timeout: Optional[float] = None) -> ExecutionResult:
        """Run `code` in the kernel (one at a time); never raises for errors in the code."""
        async with self._lock:
            if not self.running:
                await (self.start() if self._mode is None else self.restart())
            return await self._execute(code, self.timeout if timeout is None else timeout)

    async def _execute(self, code: str, timeout: float) -> ExecutionResult:
        kc = self._client
        msg_id = kc.execute(code, silent=False, store_history=True, allow_stdin=False, stop_on_error=False)
        out = _Collector(self)
        deadline = time.monotonic() + timeout
        done = await self._collect(msg_id, out, deadline)
        if done == "idle":
            return out.finish()
        if done == "dead":
            code_ = self._proc.returncode if self._proc is not None else None
            await self.restart()
            return out.finish(
                status="restarted",
                restarted=True,
                note=f"The Python kernel died (exit status {code_}; for example out of memory or over the CPU "
                f"limit) and was restarted: all variables and imports are lost; files in "
                f"{self.report.working_dir_inside if self.report else DATA_DIR} are kept.",
            )
        # Timed out: interrupt, then restart if it does not stop.
        self._interrupt()
        done = await self._collect(msg_id, out, time.monotonic() + self.interrupt_grace)
        if done == "idle":
            return out.finish(
                status="timeout",
                timed_out=True,
                note=f"Execution timed out after {timeout:g} seconds and was interrupted; "
                "the kernel state is kept.",
            )
        await self.restart()
        return out.finish(
            status="timeout",
            timed_out=True,
            restarted=True,
            note=f"Execution timed out after {timeout:g} seconds and did not stop when interrupted: the "
            "kernel was restarted and all variables and imports are lost (files are kept).",
        )

    async def _collect(self, msg_id: str, out: "_Collector", deadline: float) -> str:
        """Feed iopub messages of `msg_id` into `out` until idle ("idle"), the deadline
        ("timeout") or the kernel's death ("dead")."""
        kc = self._client
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            try:
                msg = await kc.get_iopub_msg(timeout=min(0.2, remaining))
            except queue.Empty:
                if not self.running:
                    return "dead"
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content.get("execution_state") == "idle":
                await self._drain_shell(msg_id)
                return "idle"
            out.add(kind, content)

    async def _drain_shell(self, msg_id: str) -> None:
        kc = self._client
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                reply = await kc.get_shell_msg(timeout=0.2)
            except queue.Empty:
                return
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return

    def _interrupt(self) -> None:
        kc = self._client
        msg = kc.session.msg("interrupt_request", {})
        kc.control_channel.send(msg)

    def _save_image(self, data: str, ext: str) -> Optional[str]:
        try:
            self._images += 1
            name = f"output-{self._images}.{ext}"
            path = self.working_dir / name
            path.write_bytes(base64.b64decode(data))
            if self.uid is not None:
                os.chown(path, self.uid, self.gid or self.uid)
            inside = self.report.working_dir_inside if self.report else str(self.working_dir)
            return f"{inside}/{name}"
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ launching

    def _candidate_modes(self) -> list[tuple[Mode, bool]]:
        """(mode, run as the unprivileged uid) to try, strongest first."""
        weak: list[tuple[Mode, bool]] = [("none", True), ("none", False)] if self._is_root else [("none", False)]
        if self.isolation == "none":
            return weak
        strongest: tuple[Mode, bool] = ("namespaces", True) if self._is_root else ("user-namespace", False)
        return [strongest] if self.isolation == "strict" else [strongest, *weak]

    def _prepare_dirs(self) -> None:
        if self._base is not None:
            return
        tmp = tempfile.gettempdir()
        if len(tmp) > 40:  # Unix socket paths are short (108 bytes)
            tmp = "/tmp"
        self._base = Path(tempfile.mkdtemp(prefix="fsbx-", dir=tmp))
        os.chmod(self._base, 0o711)
        for sub in ("run", "root", "home"):
            (self._base / sub).mkdir(mode=0o700)
        data = self.working_dir
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.uid is not None:
            for path in (self._base / "run", self._base / "home"):
                os.chown(path, self.uid, self.gid or self.uid)
            self._chown_tree(data)

    def _chown_tree(self, root: Path) -> None:
        assert self.uid is not None
        os.chown(root, self.uid, self.gid or self.uid)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), self.uid, self.gid or self.uid)

    def _readonly(self) -> list[str]:
        paths = list(_SYSTEM_READONLY)
        for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix,
                  os.path.dirname(os.path.realpath(self.python)), *self.readonly_paths):
            real = os.path.realpath(p)
            for candidate in {p.rstrip("/") or "/", real}:
                if candidate not in paths:
                    paths.append(candidate)
        # Drop paths already inside another bound directory.
        result = []
        for p in paths:
            covered = any(
                q != p and not os.path.islink(q) and p.startswith(q.rstrip("/") + "/") for q in paths
            )
            if not covered:
                result.append(p)
        return result

    def _launch_config(self, mode: Mode, drop: bool) -> dict[str, Any]:
        assert self._base is not None
        run = self._base / "run"
        confined = mode != "none"
        runtime_inside = _RUNTIME_INSIDE if confined else str(run)
        workdir_inside = DATA_DIR if confined else str(self.working_dir)
        home = "/tmp" if confined else str(self._base / "home")
        venv_bin = os.path.dirname(self.python)
        env = {
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "IPYTHONDIR": f"{home}/.ipython",
            "MPLCONFIGDIR": f"{home}/.matplotlib",
            "MPLBACKEND": "Agg",
            "TMPDIR": "/tmp" if confined else home,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            "OMP_NUM_THREADS": "2",
            "OPENBLAS_NUM_THREADS": "2",
        }
        if sys.prefix != sys.base_prefix:
            env["VIRTUAL_ENV"] = sys.prefix
        kernel_conn = f"{runtime_inside}/kernel.json"
        argv = [self.python, "-m", "ipykernel_launcher", "-f", kernel_conn,
                "--HistoryManager.hist_file=:memory:", "--IPKernelApp.log_level=ERROR",
                "--InteractiveShell.xmode=Plain", "--InteractiveShell.colors=nocolor"]
        namespaces = {
            "namespaces": ["mount", "net", "pid", "ipc", "uts"],
            "user-namespace": ["user", "mount", "net", "pid", "ipc", "uts"],
            "none": [],
        }[mode]
        return {
            "namespaces": namespaces,
            "root": str(self._base / "root") if confined else None,
            "readonly": self._readonly(),
            "etc": _ETC,
            "workdir": str(self.working_dir),
            "workdir_inside": workdir_inside,
            "runtime": str(run),
            "runtime_inside": runtime_inside,
            "tmp_size": self.tmp_size,
            "uid": self.uid if drop else None,
            "gid": self.gid if drop else None,
            "rlimits": {
                "as": self.memory_limit,
                "cpu": self.cpu_limit,
                "nproc": self.process_limit,
                "fsize": self.file_size_limit,
                "nofile": self.open_files_limit,
                "core": 0,
            },
            "argv": argv,
            "env": env,
        }

    async def _launch(self, mode: Mode, drop: bool) -> None:
        from jupyter_client.asynchronous import AsyncKernelClient

        assert self._base is not None
        cfg = self._launch_config(mode, drop)
        self._launched = (mode, drop)
        run = self._base / "run"
        for stale in run.iterdir():
            stale.unlink()
        key = secrets.token_hex(16)
        ports = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
        info = {**ports, "transport": "ipc", "signature_scheme": "hmac-sha256", "key": key, "kernel_name": ""}
        kernel_file = run / "kernel.json"
        kernel_file.write_text(json.dumps({**info, "ip": f"{cfg['runtime_inside']}/k"}))
        if self.uid is not None:
            os.chown(kernel_file, self.uid, self.gid or self.uid)
        os.chmod(kernel_file, 0o600)
        cfg_file = self._base / f"launch-{mode}.json"
        cfg_file.write_text(json.dumps(cfg))
        os.chmod(cfg_file, 0o600)
        log_path = self._base / "kernel.log"
        with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", str(_LAUNCHER), str(cfg_file)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            )
        kc = AsyncKernelClient()
        kc.load_connection_info({**info, "ip": str(run / "k"), "key": key.encode()})
        kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        self._client = kc
        try:
            await self._wait_ready(log_path)
        except _SetupFailed:
            raise  # the caller cleans up and may try a weaker mode
        except BaseException:  # cancelled while starting: leave nothing running
            for pid in _children(self._proc.pid):
                _signal(pid, signal.SIGKILL)
            _signal(-self._proc.pid, signal.SIGKILL)
            raise
        report_file = run / "report.json"
        launched = json.loads(report_file.read_text()) if report_file.exists() else {}
        self.report = self._make_report(mode, cfg, launched)

    async def _wait_ready(self, log_path: Path) -> None:
        kc = self._client
        deadline = time.monotonic() + self.startup_timeout
        msg_id = None
        got_shell = got_iopub = False
        last_sent = 0.0
        while not (got_shell and got_iopub):
            proc = self._proc
            assert proc is not None
            if proc.poll() is not None:
                log = log_path.read_text(errors="replace") if log_path.exists() else ""
                failed = [ln for ln in log.splitlines() if ln.startswith("SANDBOX_SETUP_FAILED:")]
                if proc.returncode == _SETUP_FAILED and failed:
                    raise _SetupFailed(failed[-1].split(":", 1)[1].strip())
                raise _SetupFailed(
                    f"the kernel exited with status {proc.returncode} before it was ready"
                    f" (is ipykernel installed for {self.python}? pip install 'functionary[interpreter]'):\n"
                    + log[-2000:]
                )
            now = time.monotonic()
            if now > deadline:
                raise _SetupFailed(f"the kernel was not ready after {self.startup_timeout:g} s")
            if now - last_sent > 1.0:  # resend: early messages may be lost while sockets connect
                msg_id = kc.kernel_info()
                last_sent = now
            try:
                msg = await kc.get_shell_msg(timeout=0.05)
                if msg.get("msg_type") == "kernel_info_reply":
                    got_shell = True
            except queue.Empty:
                pass
            try:
                while True:
                    msg = await kc.get_iopub_msg(timeout=0.05)
                    if msg.get("msg_type") == "status":
                        got_iopub = True
            except queue.Empty:
                pass
        del msg_id

    def _make_report(self, mode: Mode, cfg: dict[str, Any], launched: dict[str, Any]) -> SandboxReport:
        namespaces = launched.get("namespaces", [])
        notes = list(launched.get("notes", []))
        privileges = launched.get("privileges", "unknown")
        if "net" in namespaces:
            network = True
            if not launched.get("loopback", False):
                notes.append("no loopback inside the network namespace")
        else:
            network = False
            notes.append("the code can reach the host's network, including 127.0.0.1")
        if launched.get("filesystem") == "pivot_root":
            confined = True
            readonly = ", ".join(p for p in cfg["readonly"] if os.path.lexists(p))
            fs = (f"minimal root via mount namespace + pivot_root: read-only {readonly} and a few /etc files; "
                  f"writable {cfg['workdir_inside']} and a private /tmp ({cfg['tmp_size']}); nothing else "
                  "of the host is mounted")
        elif cfg["uid"] is not None:
            confined = False
            fs = (f"no mount namespace: runs as uid {self.uid} in the private folder {self.working_dir}; "
                  "root-only files are unreadable but world-readable host files are readable")
        else:
            confined = False
            fs = "no mount namespace and no separate user: the code can read and write what this user can"
        rl = launched.get("rlimits", {})
        return SandboxReport(
            mode=mode,
            network_isolated=network,
            filesystem_confined=confined,
            filesystem=fs,
            privileges=privileges,
            memory_limit=rl.get("as"),
            cpu_limit=rl.get("cpu"),
            process_limit=rl.get("nproc"),
            file_size_limit=rl.get("fsize"),
            timeout=self.timeout,
            working_dir=self.working_dir,
            working_dir_inside=cfg["workdir_inside"],
            notes=notes,
        )

    async def _kill(self) -> None:
        kc, self._client = self._client, None
        if kc is not None:
            try:
                kc.stop_channels()
                kc.context.destroy(linger=0)
            except Exception:  # noqa: BLE001 - best effort
                pass
        proc, self._proc = self._proc, None
        if proc is None:
            return
        launched_mode, launched_drop = self._launched or ("none", False)
        if proc.poll() is None:
            # With a pid namespace: kill its pid 1 (the launcher's child). Pid 1 cannot finish
            # dying before every other process of the namespace is gone, and the launcher exits
            # once it has reaped pid 1, so waiting for the launcher waits for all of them.
            # Without one (or if that is slow), kill the launcher's and the kernel's sessions.
            children = _children(proc.pid) if launched_mode != "none" else []
            for child in children:
                _signal(child, signal.SIGKILL)
            if children:
                try:
                    await asyncio.to_thread(proc.wait, 10)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                _signal(-proc.pid, signal.SIGKILL)  # the launcher's session
        await asyncio.to_thread(proc.wait)
        if launched_mode == "none" and launched_drop and self.uid is not None:
            # Processes that left the kernel's session: kill everything of the sandbox uid.
            await asyncio.to_thread(
                subprocess.run,
                ["/bin/sh", "-c", "kill -KILL -1"],  # kill(-1) spares the caller
                user=self.uid, group=self.gid, extra_groups=[], check=False,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )


def _signal(pid: int, sig: int) -> None:
    """`os.kill`, ignoring processes that are already gone (a negative pid: a process group)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        pass
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


class _Collector:
    """Folds iopub messages into the text the model sees."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.parts: list[str] = []
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.result: Optional[str] = None
        self.error: Optional[str] = None
        self.files: list[str] = []

    def add(self, kind: str, content: dict[str, Any]) -> None:
        if kind == "stream":
            text = content.get("text", "")
            (self.stdout if content.get("name") == "stdout" else self.stderr).append(text)
            self.parts.append(text)
        elif kind in ("execute_result", "display_data"):
            data = content.get("data", {})
            for mime, ext in (("image/png", "png"), ("image/jpeg", "jpg")):
                if mime in data:
                    path = self.sandbox._save_image(data[mime], ext)
                    if path:
                        self.files.append(path)
                        self.parts.append(f"[image saved to {path}]\n")
                    break
            else:
                text = data.get("text/plain")
                if text is not None:
                    if kind == "execute_result":
                        self.result = text
                    self.parts.append(text if text.endswith("\n") else text + "\n")
        elif kind == "error":
            self.error = f"{content.get('ename')}: {content.get('evalue')}"
            tb = "\n".join(content.get("traceback", []))
            self.parts.append(_ANSI.sub("", tb) + "\n")
        elif kind == "clear_output":
            self.parts.clear()

    def finish(
        self,
        *,
        status: Optional[str] = None,
        note: Optional[str] = None,
        timed_out: bool = False,
        restarted: bool = False,
    ) -> ExecutionResult:
        text = "".join(self.parts)
        if text.endswith("\n"):
            text = text[:-1]
        text, cut = truncate(text, self.sandbox.max_output_chars)
        if note:
            text = f"{text}\n[{note}]" if text else f"[{note}]"
        if status is None:
            status = "error" if self.error else "ok"
        return ExecutionResult(
            text=text,
            status=status,  # type: ignore[arg-type]
            stdout="".join(self.stdout),
            stderr="".join(self.stderr),
            result=self.result,
            error=self.error,
            timed_out=timed_out,
            restarted=restarted,
            truncated=cut,
            files=self.files,
        )
