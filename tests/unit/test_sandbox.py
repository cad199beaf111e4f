"""`functionary.sandbox`: a real ipykernel in the sandbox; state, timeouts, and escape attempts.

The escape tests need the strongest mode (root with namespaces, as on the CI machines); where it is
not available they are skipped with the reason, and the fallback is tested for honest reporting.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

pytest.importorskip("ipykernel")
pytest.importorskip("jupyter_client")

from functionary.client import ChatRunner  # noqa: E402
from functionary.sandbox import Sandbox  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024**2


def _namespaces_available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "true"],
                          capture_output=True).returncode == 0


strong = pytest.mark.skipif(not _namespaces_available(), reason="needs root and Linux namespaces")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) == uid:
                pids.append(int(entry))
    return pids


@pytest.mark.anyio
async def test_state_output_files_and_report() -> None:
    async with Sandbox(max_output_chars=300, isolation="strict" if _namespaces_available() else "auto") as sb:
        report = sb.report
        assert report is not None and "timeout=60 s per execution" in report.summary()
        assert (await sb.execute("x = 21")).text == ""
        r = await sb.execute("print('half is', x / 2)\nx * 2")
        assert r.ok and r.text == "half is 10.5\n42" and r.result == "42" and r.stdout == "half is 10.5\n"
        r = await sb.execute("1 / 0")
        assert r.status == "error" and r.error == "ZeroDivisionError: division by zero"
        assert "ZeroDivisionError" in r.text and "\x1b[" not in r.text
        r = await sb.execute("print('a' * 5000)")
        assert r.truncated and len(r.text) < 400 and "characters truncated" in r.text
        # The working folder is shared with the host (as /mnt/data when confined).
        (sb.working_dir / "input.csv").write_text("a,b\n1,2\n")
        r = await sb.execute(
            "import os\nprint(os.getcwd())\nprint(open('input.csv').read().strip())\n"
            "open('out.txt', 'w').write('from the sandbox')"
        )
        assert r.stdout.splitlines()[:2] == [report.working_dir_inside, "a,b"]
        assert (sb.working_dir / "out.txt").read_text() == "from the sandbox"
        # The runner sends `python` calls here.
        runner = ChatRunner(client=None, model="m", code_interpreter=sb)
        result = await runner.execute_call("call_1", "python", "x + 1")
        assert result.content == "22" and result.error is None
        await runner.aclose()  # not its sandbox: stays open
        assert sb.running


@pytest.mark.anyio
async def test_timeout_interrupts_and_keeps_state() -> None:
    async with Sandbox(timeout=1) as sb:
        r = await sb.execute("y = 5\nwhile True:\n    pass")
        assert r.timed_out and not r.restarted and r.status == "timeout"
        assert "KeyboardInterrupt" in r.text and "timed out after 1 seconds and was interrupted" in r.text
        assert (await sb.execute("y")).text == "5"


@pytest.mark.anyio
async def test_timeout_restarts_a_kernel_that_ignores_interrupts() -> None:
    async with Sandbox(timeout=1, interrupt_grace=1) as sb:
        await sb.execute("z = 1")
        r = await sb.execute("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                             "while True:\n    time.sleep(0.05)")
        assert r.timed_out and r.restarted and "kernel was restarted" in r.text
        r = await sb.execute("z")
        assert r.status == "error" and "NameError" in r.text  # a fresh kernel
        assert (await sb.execute("2 + 2")).text == "4"


@strong
@pytest.mark.anyio
async def test_no_network_not_even_the_hosts_loopback() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, addr = server.accept()
            except OSError:
                continue
            accepted.append(addr)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        # The host side can reach it ...
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        async with Sandbox(isolation="strict") as sb:
            assert sb.report is not None and sb.report.network_isolated
            r = await sb.execute(
                "import socket\nprint(sorted(name for _, name in socket.if_nameindex()))\n"
                f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('CONNECTED')\n"
                "except OSError as e:\n    print(type(e).__name__)"
            )
        # ... the sandbox cannot: its loopback is its own.
        assert r.stdout.splitlines() == ["['lo']", "ConnectionRefusedError"]
        assert len(accepted) == 1
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@strong
@pytest.mark.anyio
async def test_files_outside_the_working_folder_are_not_there(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    secret.chmod(0o644)  # world-readable: only the mount namespace keeps it out
    async with Sandbox(isolation="strict") as sb:
        assert sb.report is not None and sb.report.filesystem_confined
        probes = [str(secret), str(ROOT / "pyproject.toml"), "/etc/shadow", "/root/.bashrc", str(sb.working_dir)]
        r = await sb.execute(
            "import errno, os\n"
            f"for p in {probes!r}:\n"
            "    try:\n        open(p).read(); print('READ', p)\n"
            "    except OSError as e:\n        print(type(e).__name__)\n"
            "for p in ['/escape.txt', '/usr/escape.txt', '/etc/escape.txt']:\n"
            "    try:\n        open(p, 'w').write('x'); print('WROTE', p)\n"
            "    except OSError as e:\n        print(errno.errorcode[e.errno])\n"
            "print(os.getuid() != 0)"
        )
        # Nothing outside the minimal root exists in there; its root, /usr and /etc are read-only
        # and the kernel is not root.
        assert r.stdout.splitlines() == ["FileNotFoundError"] * 5 + ["EROFS"] * 3 + ["True"], r.text


@pytest.mark.anyio
async def test_memory_limit() -> None:
    async with Sandbox(memory_limit=1024 * MiB) as sb:
        r = await sb.execute("block = bytearray(2 * 1024**3)")
        assert r.status == "error" and r.error is not None and r.error.startswith("MemoryError")
        assert (await sb.execute("small = bytearray(10 * 1024**2); len(small)")).text == "10485760"


@strong
@pytest.mark.anyio
async def test_fork_bomb_is_bounded_and_cleaned_up() -> None:
    async with Sandbox(process_limit=40, isolation="strict") as sb:
        uid = sb.uid
        assert uid is not None
        r = await sb.execute(
            "import os, time\nchildren = []\n"
            "try:\n    while True:\n        pid = os.fork()\n"
            "        if pid == 0:\n            time.sleep(120)\n            os._exit(0)\n"
            "        children.append(pid)\n"
            "except OSError as e:\n    print('stopped', len(children), e.errno)"
        )
        words = r.stdout.split()
        assert words[0] == "stopped" and int(words[1]) < 40 and words[2] == "11", r.text  # EAGAIN
        assert len(processes_of(uid)) <= 40
        assert (await sb.execute("1 + 1")).text == "2"  # the kernel is fine
        # A restart tears the whole pid namespace down, the sleeping children included.
        await sb.restart()
        assert (await sb.execute("'children' in dir()")).text == "False"
    assert processes_of(uid) == []


@pytest.mark.anyio
async def test_cpu_limit_kills_and_restarts_the_kernel() -> None:
    async with Sandbox(cpu_limit=3, timeout=30) as sb:
        r = await sb.execute("while True:\n    pass")
        assert r.restarted and r.status == "restarted" and "kernel died" in r.text
        assert (await sb.execute("3 * 3")).text == "9"


@pytest.mark.anyio
async def test_fallback_reports_what_is_not_enforced() -> None:
    async with Sandbox(isolation="none", timeout=5) as sb:
        report = sb.report
        assert report is not None and report.mode == "none"
        assert not report.network_isolated and not report.filesystem_confined
        summary = report.summary()
        assert "network isolated=NO" in summary and "filesystem confined=NO" in summary
        assert "memory limit=2.0 GiB" in summary
        assert (await sb.execute("import os; os.getcwd()")).text == repr(str(sb.working_dir))
