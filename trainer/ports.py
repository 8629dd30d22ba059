"""Rendezvous ports for jobs on a shared machine.

DeepSpeed's launcher listens on port 29500 unless told ``--master_port``; a second job on the
same machine then dies with a raw ``EADDRINUSE``. ``python -m lavla.trainer.ports`` prints the
default port when it is free and another free port when it is not (``make quickstart`` uses it).
"""

from __future__ import annotations

import socket
import sys

DEFAULT_MASTER_PORT = 29500
"""DeepSpeed's and torch.distributed's default rendezvous port."""


def port_is_free(port: int, host: str = "") -> bool:
    """True if a TCP server could listen on ``port`` now (all interfaces by default, as
    torch's TCPStore does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free, else a port the OS reports free."""
    if preferred is not None and port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def port_in_use_message(port: int | str, host: str = "") -> str:
    where = f"{host}:{port}" if host else str(port)
    return (f"the rendezvous port {where} (MASTER_PORT) is already in use, most likely by another "
            f"job on this machine. Start this job on a free port: `deepspeed --master_port "
            f"{free_port()} ...` (`make quickstart` picks a free one by itself).")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    preferred = int(args[0]) if args else DEFAULT_MASTER_PORT
    port = free_port(preferred)
    if port != preferred:
        print(f"port {preferred} is taken (another job?); using port {port}", file=sys.stderr)
    print(port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
