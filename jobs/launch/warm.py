"""``python -m jobs.launch.warm SOCKET``: DeepSpeed's per-node launcher, imported once, forked per local job.

DeepSpeed's launcher (``deepspeed.launcher.launch``) imports DeepSpeed and torch before it starts the first rank:
seconds of CPU on every local launch, most of a small job's time to its first step on a small machine. This
process does that import once, then serves requests on a Unix socket (created 0600; a peer of another user is
refused). Per request it forks the job's session leader, which does what ``jobs.launch.wrapper`` does for an
exec'd launcher (child.json, exit.json, SIGTERM/SIGINT passed on to the launcher's group) and forks again to run
the launcher's ``main()`` with the job's arguments, environment, working directory and log files. The ranks the
launcher starts are new interpreters, exactly as from an exec'd launcher.

Only CPU jobs come here (DS_ACCELERATOR=cpu): a process that touched a GPU driver must not fork. The process
exits when the process that started it does, and refuses to serve if its imports started a thread (a fork would
copy that thread's locks without the thread).

Request: one message of a 4-byte big-endian length and a JSON object {"run_dir", "cwd", "env", "args"} (args:
the launcher's command line after ``-m deepspeed.launcher.launch``) and optionally "uid"/"gid", the job's own user,
which the forked session leader switches to before anything of the job's runs, carrying the job's stdout and stderr file
descriptors (SCM_RIGHTS). Answer: the same framing, {"pid": <session leader>, "start_ticks": N} or {"error": ...}.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import sys
import threading
import traceback
from pathlib import Path

MAX_REQUEST = 1 << 20


def read_message(conn: socket.socket, *, max_fds: int = 0) -> tuple[dict, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, max_fds)
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        if len(data) >= 4 and struct.unpack(">I", data[:4])[0] > MAX_REQUEST:
            raise ValueError("message too long")
        more = conn.recv(MAX_REQUEST)
        if not more:
            raise ConnectionError("closed before the whole message arrived")
        data += more
    (size,) = struct.unpack(">I", data[:4])
    return json.loads(data[4 : 4 + size]), list(fds)


def frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


def _peer_uid(conn: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return uid


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, read here because the job may be gone (and reaped) before the client looks."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _run_launcher(args: list[str]) -> int:
    from deepspeed.launcher import launch

    sys.argv = ["deepspeed.launcher.launch", *args]
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):  # as `python -u`: the watchers tail the logs
            stream.reconfigure(line_buffering=True, write_through=True)
    try:
        launch.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    return code


def _job(request: dict, out_fd: int, err_fd: int) -> int:
    """The forked session leader: set up the job's process state, fork the launcher, supervise it."""
    from jobs.launch.wrapper import supervise

    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((devnull, 0), (out_fd, 1), (err_fd, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request.get("uid") is not None:
        # The job's own user, as the exec'd launcher gets it from Popen(user=, group=, extra_groups=[], umask=):
        # groups first (setgroups needs the privilege setuid gives up), and for good (real and saved ids too).
        os.setgroups([])
        os.setresgid(request["gid"], request["gid"], request["gid"])
        os.setresuid(request["uid"], request["uid"], request["uid"])
        os.umask(0o077)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # this process waits for its child
    launcher = os.fork()
    if launcher == 0:
        os.setsid()  # the launcher and its ranks: one group that cancel stops whole
        code = _run_launcher(request["args"])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code & 0xFF)
    return supervise(Path(request["run_dir"]), launcher)


def _serve_one(conn: socket.socket, listener: socket.socket) -> None:
    if _peer_uid(conn) != os.getuid():
        conn.sendall(frame({"error": "refused: another user"}))
        return
    request, fds = read_message(conn, max_fds=2)
    try:
        if len(fds) != 2 or not all(isinstance(request.get(k), t) for k, t in _FIELDS.items()):
            conn.sendall(frame({"error": "a request needs run_dir, cwd, env, args and two file descriptors"}))
            return
        if not all(isinstance(request.get(k, 0), int) for k in ("uid", "gid")):
            conn.sendall(frame({"error": "uid and gid must be integers"}))
            return
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                listener.close()
                conn.close()
                code = _job(request, fds[0], fds[1])
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code & 0xFF)
        conn.sendall(frame({"pid": pid, "start_ticks": _start_ticks(pid)}))
    finally:
        for fd in fds:
            os.close(fd)


_FIELDS = {"run_dir": str, "cwd": str, "env": dict, "args": list}


def serve(path: str) -> int:
    # DeepSpeed imports mlflow, which imports pyarrow where it is installed; pyarrow's jemalloc then starts a
    # background thread, and a process with threads must not fork. Arrow reads this setting when it loads.
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")
    import deepspeed.launcher.launch  # noqa: F401  (the import this process exists to hold)

    import jobs.launch.wrapper  # noqa: F401  (the forked session leaders use it)

    if threading.active_count() > 1 or len(os.listdir("/proc/self/task")) > 1:
        print("warm launcher: the imports started threads; not serving (jobs start the launcher themselves)")
        return 3
    # Jobs are reaped by the kernel: their exit status is in their exit.json, written by their session leader.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        tmp = f"{path}.{os.getpid()}"
        listener.bind(tmp)
    finally:
        os.umask(old_umask)
    listener.listen(16)
    os.replace(tmp, path)  # listening before a client can find it
    inode = os.stat(path).st_ino
    listener.settimeout(1.0)
    sys.stdout.write(f"warm launcher ready on {path}\n")
    sys.stdout.flush()
    try:
        while os.getppid() == parent:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                try:
                    _serve_one(conn, listener)
                except (OSError, ValueError, ConnectionError):
                    traceback.print_exc()
    finally:
        try:
            if os.stat(path).st_ino == inode:  # not a successor's socket
                os.unlink(path)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m jobs.launch.warm SOCKET", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(sys.argv[1]))
