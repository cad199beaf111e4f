"""Sandbox launcher: builds the kernel's confinement, then execs the Jupyter kernel.

Runs as its own process (`python -I _launcher.py CONFIG.json`), standard library only, and does
what the config asks, in this order:

1. `unshare` the namespaces asked for (user, mount, network, pid, ipc, uts). In a new user
   namespace (unprivileged hosts) the caller's uid is mapped to 0.
2. Fork (a new pid namespace applies to children): the parent stays outside, forwards SIGTERM/
   SIGINT/SIGHUP and exits with the child's status; the child is pid 1 ("init") of the sandbox.
3. In the child: bring up a private loopback, build a minimal root on a tmpfs (read-only binds of
   the interpreter and system libraries, the working folder at /mnt/data, a private /tmp, a few
   device nodes, a fresh /proc), `pivot_root` into it and detach the host's tree.
4. Set the rlimits, drop privileges (setuid to an unprivileged uid, or drop every capability in a
   user namespace), set no_new_privs, write `report.json` (what was actually enforced).
5. Fork the kernel (its own session, so an interrupt reaches only it and its children), reap
   orphans as pid 1, and exit when the kernel exits (which tears the namespace down).

Any failure before the kernel starts exits with status 125 and one line `SANDBOX_SETUP_FAILED:
reason` on stderr, so the caller can fall back to a weaker mode and say why.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import resource
import signal
import socket
import struct
import sys

SETUP_FAILED = 125

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = {
    "user": CLONE_NEWUSER,
    "mount": CLONE_NEWNS,
    "net": CLONE_NEWNET,
    "pid": CLONE_NEWPID,
    "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS,
}

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
# statvfs f_flag bits -> mount flags (a bind remount must keep the locked ones in a user namespace)
_ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: 1024, 2048: 2048, 4096: 1 << 21}

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
SYS_CAPSET = {"x86_64": 126, "aarch64": 91, "ppc64le": 184, "s390x": 185}

RLIMITS = {
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
    "nproc": resource.RLIMIT_NPROC,
    "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
    "core": resource.RLIMIT_CORE,
}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class SetupError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)} (errno {err})")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda v: None if v is None else os.fsencode(v)  # noqa: E731
    _check(
        _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {source or ''} -> {target}",
    )


def _machine() -> str:
    return os.uname().machine


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------- namespaces


def _enter_namespaces(cfg: dict) -> None:
    names = list(cfg.get("namespaces", []))
    if not names:
        return
    uid, gid = os.getuid(), os.getgid()
    if "user" in names:
        _check(_libc.unshare(CLONE_NEWUSER), "unshare(user)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    flags = 0
    for name in names:
        if name != "user":
            flags |= NAMESPACE_FLAGS[name]
    _check(_libc.unshare(flags), f"unshare({','.join(n for n in names if n != 'user')})")


def _loopback_up() -> None:
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))


# ----------------------------------------------------------------------------- filesystem


def _bind(src: str, dst: str, *, readonly: bool, extra: int = MS_NOSUID | MS_NODEV) -> None:
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.exists(dst):
            open(dst, "a").close()
    _mount(src, dst, None, MS_BIND | MS_REC)
    locked = 0
    st = os.statvfs(src)
    for st_bit, ms_bit in _ST_TO_MS.items():
        if st.f_flag & st_bit:
            locked |= ms_bit
    flags = MS_REMOUNT | MS_BIND | locked | extra | (MS_RDONLY if readonly else 0)
    _mount(None, dst, None, flags)


def _build_root(cfg: dict) -> list[str]:
    """Populate `cfg['root']` (a tmpfs) and pivot into it. Returns notes for the report."""
    root = cfg["root"]
    notes: list[str] = []
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    # The private /tmp comes first: read-only binds below it (a venv in a checkout under /tmp)
    # must land on top of it, not be hidden by it.
    os.makedirs(root + "/tmp")
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg.get('tmp_size', '256m')},mode=1777")
    for path in cfg.get("readonly", []):
        if not os.path.lexists(path):
            continue
        target = root + path
        if os.path.islink(path) and os.path.dirname(path) == "/":
            os.symlink(os.readlink(path), target)  # /bin -> usr/bin on merged-/usr systems
            continue
        _bind(path, target, readonly=True)
    # /etc: only a few files, and our own passwd/group/hosts.
    os.makedirs(root + "/etc", exist_ok=True)
    for name in cfg.get("etc", []):
        path = "/etc/" + name
        if os.path.exists(path):
            _bind(path, root + path, readonly=True)
    uid, gid = cfg.get("uid"), cfg.get("gid")
    user_line = f"sandbox:x:{uid}:{gid}:sandbox:/tmp:/bin/sh\n" if uid not in (None, 0) else ""
    group_line = f"sandbox:x:{gid}:\n" if gid not in (None, 0) else ""
    _write(root + "/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n" + user_line)
    _write(root + "/etc/group", "root:x:0:\n" + group_line)
    _write(root + "/etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    _write(root + "/etc/hostname", "sandbox\n")
    # /dev
    dev = root + "/dev"
    os.makedirs(dev)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        if os.path.exists("/dev/" + node):
            _bind("/dev/" + node, f"{dev}/{node}", readonly=False, extra=MS_NOSUID | MS_NOEXEC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(dev + "/shm")
    _mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"size={cfg.get('shm_size', '64m')},mode=1777")
    # /tmp, /proc, the working folder and the kernel's runtime folder
    os.makedirs(root + "/proc")
    if "pid" in cfg.get("namespaces", []):
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    else:
        notes.append("no pid namespace: /proc not mounted")
    _bind(cfg["workdir"], root + cfg["workdir_inside"], readonly=False)
    _bind(cfg["runtime"], root + cfg["runtime_inside"], readonly=False)
    # Swap roots and forget the host's tree.
    os.chdir(root)
    nr = SYS_PIVOT_ROOT.get(_machine())
    pivoted = False
    if nr is not None:
        if _libc.syscall(ctypes.c_long(nr), b".", b".") == 0:
            _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
            pivoted = True
    if not pivoted:
        os.chroot(".")
        notes.append("pivot_root unavailable: chroot used")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return notes


# ----------------------------------------------------------------------------- limits, privileges


def _set_rlimits(limits: dict) -> dict:
    applied = {}
    for name, value in limits.items():
        if value is None:
            continue
        resource.setrlimit(RLIMITS[name], (int(value), int(value)))
        applied[name] = int(value)
    return applied


def _drop_capabilities() -> None:
    for cap in range(0, 64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    nr = SYS_CAPSET.get(_machine())
    if nr is None:
        raise SetupError("capset: unknown architecture")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} all zero
    _check(_libc.syscall(ctypes.c_long(nr), header, data), "capset")


def _drop_privileges(cfg: dict) -> str:
    uid, gid = cfg.get("uid"), cfg.get("gid")
    if uid is not None and os.getuid() == 0 and "user" not in cfg.get("namespaces", []):
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        how = f"uid {uid}, gid {gid}, no capabilities"
    elif "user" in cfg.get("namespaces", []):
        _drop_capabilities()
        how = f"host uid {cfg.get('host_uid')} (root only inside its user namespace), all capabilities dropped"
    else:
        how = f"unchanged (uid {os.getuid()})"
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    return how


# ----------------------------------------------------------------------------- processes


def _forward_signals(pid: int) -> None:
    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)


def _wait_for(pid: int) -> int:
    """Reap every child (we may be pid 1) until `pid` exits; its exit status."""
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if done == pid:
            return os.waitstatus_to_exitcode(status)


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


def _fail(message: str) -> None:
    sys.stderr.write(f"SANDBOX_SETUP_FAILED: {message}\n")
    sys.stderr.flush()
    os._exit(SETUP_FAILED)


def _exec(argv: list, env: dict) -> None:
    try:
        os.execve(argv[0], argv, env)
    except OSError as exc:
        _fail(f"cannot run the kernel as uid {os.getuid()}: {exc}")


def _sandbox_init(cfg: dict) -> None:
    """Pid 1 of the sandbox (or the only process without a pid namespace)."""
    report: dict = {"namespaces": list(cfg.get("namespaces", [])), "notes": []}
    try:
        if "net" in cfg.get("namespaces", []):
            try:
                _loopback_up()
                report["loopback"] = True
            except OSError as exc:
                report["loopback"] = False
                report["notes"].append(f"private loopback not up: {exc}")
        if cfg.get("root"):
            report["notes"].extend(_build_root(cfg))
            report["filesystem"] = "pivot_root"
        report["rlimits"] = _set_rlimits(cfg.get("rlimits", {}))
        report["privileges"] = _drop_privileges(cfg)
        if "pid" in cfg.get("namespaces", []):
            _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        _write(os.path.join(cfg["runtime_inside"], "report.json"), json.dumps(report))
        os.chdir(cfg["workdir_inside"])
    except Exception as exc:  # noqa: BLE001 - any setup failure is reported, not raised
        _fail(f"{type(exc).__name__}: {exc}")
    argv, env = cfg["argv"], cfg["env"]
    if "pid" not in cfg.get("namespaces", []):
        if os.getsid(0) != os.getpid():
            os.setsid()
        _exec(argv, env)
    kernel = os.fork()
    if kernel == 0:
        os.setsid()
        _exec(argv, env)
    _forward_signals(kernel)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os._exit(_exit_code(_wait_for(kernel)))


def main() -> None:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    cfg["host_uid"] = os.getuid()
    try:
        _enter_namespaces(cfg)
    except Exception as exc:  # noqa: BLE001
        _fail(f"{type(exc).__name__}: {exc}")
    if "pid" not in cfg.get("namespaces", []):
        _sandbox_init(cfg)  # execs the kernel
        return
    child = os.fork()
    if child == 0:
        _sandbox_init(cfg)
        os._exit(127)
    _forward_signals(child)
    os._exit(_exit_code(_wait_for(child)))


if __name__ == "__main__":
    main()
