"""Run a command with its stderr (and stdout) on a pseudo-terminal, as a person at a terminal would."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Sequence


def run_on_pty(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
               timeout: float = 300) -> tuple[int, str]:
    """(exit status, everything written to the terminal, a 100-column one)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise TimeoutError(f"{cmd[0]} still running after {timeout} s")
        status = proc.wait(timeout=30)
    finally:
        os.close(master)
    return status, b"".join(chunks).decode("utf-8", "replace")
