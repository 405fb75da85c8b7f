"""Starts P processes of ``jdo-train`` on this machine as one multi-process JAX run.

    jdo-launch --processes 2 --cpu-devices 4 -- lifting=shard_map workers=8

Each process gets ``JDO_COORDINATOR`` / ``JDO_NUM_PROCESSES`` / ``JDO_PROCESS_ID`` (read by
``jdo.train.distributed``) and, on CPU, ``cpu_devices`` simulated devices; collectives go over
gloo. All processes share one run directory (``hydra.run.dir``, chosen here if not given);
only process 0 writes logs and metrics; the others log warnings and errors only. Their output
passes through the launcher, which drops gloo's "[Gloo] Rank i is connected to j peer ranks"
lines (one per device and communicator). If a process dies, the launcher names it, gives the
others ``--grace`` seconds to stop on their own (jdo's watchdog stops them with status 4), then
kills them, and exits non-zero: nothing hangs. This is the local stand-in for ``srun`` /
``mpirun``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

EXIT_PREEMPTED = 75  # jdo.train.preemption.EXIT_PREEMPTED (not imported: JAX must not start here)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# gloo prints one line per device whenever it connects a communicator (on stdout, from C++,
# from several threads at once, so two reports can be cut into each other across lines)
_GLOO_WORDS = re.compile(
    rb"\[Gloo\]|Rank|\d+|is connected to|peer ranks\.|Expected number of connected peer ranks is :"
)
_GLOO_MARKS = (b"[Gloo]", b"is connected to", b"peer ranks")


def is_gloo_chatter(line: bytes) -> bool:
    """Whether ``line`` holds nothing but pieces of gloo's connection reports."""
    return any(m in line for m in _GLOO_MARKS) and not _GLOO_WORDS.sub(b"", line).strip()


def _forward(stream, out) -> None:
    """Copies a child's output to ``out`` line by line, without gloo's chatter."""
    for line in iter(stream.readline, b""):
        if not is_gloo_chatter(line):
            out.write(line)
            out.flush()
    stream.close()


class _TextOut:
    """Bytes to a text stream (``sys.stdout`` replaced by one without a buffer)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode(errors="replace"))

    def flush(self) -> None:
        self.stream.flush()


def _describe(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jdo-launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--processes", "-n", type=int, default=2, help="processes to start")
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="simulated CPU devices per process (default: none set)",
    )
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
    parser.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="seconds the others get to stop after one process dies",
    )
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        help="Hydra overrides for jdo-train (after --)",
    )
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f"--processes: must be a positive integer, got {args.processes}")
    if args.cpu_devices is not None and args.cpu_devices < 1:
        parser.error(f"--cpu-devices: must be a positive integer, got {args.cpu_devices}")
    overrides = [o for o in args.overrides if o != "--"]
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        stamp = datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
        overrides.append(f"hydra.run.dir=outputs/{stamp}")
    if args.cpu_devices is not None:
        overrides.append(f"cpu_devices={args.cpu_devices}")
    coordinator = f"127.0.0.1:{args.port or _free_port()}"
    procs = []
    for i in range(args.processes):
        env = {
            **os.environ,
            "JDO_COORDINATOR": coordinator,
            "JDO_NUM_PROCESSES": str(args.processes),
            "JDO_PROCESS_ID": str(i),
        }
        env["PYTHONUNBUFFERED"] = "1"  # its prints pass through a pipe: keep them prompt
        if args.cpu_devices is not None:  # cpu_devices sets the device count; keep other flags
            flags = env.get("XLA_FLAGS", "").split()
            env["XLA_FLAGS"] = " ".join(
                f for f in flags if not f.startswith("--xla_force_host_platform_device_count")
            )
        extra = [] if i == 0 else ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
        procs.append(
            subprocess.Popen(  # noqa: S603 - our own module
                [sys.executable, "-m", "jdo.train.cli", *overrides, *extra],
                env=env,
                stdout=subprocess.PIPE,
            )
        )
    out = getattr(sys.stdout, "buffer", None) or _TextOut(sys.stdout)
    forwarders = [threading.Thread(target=_forward, args=(p.stdout, out)) for p in procs]
    for thread in forwarders:
        thread.start()

    def stop_all(sig):
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    # Forward SIGTERM/SIGUSR2 (preemption) to every process: they checkpoint together.
    for sig in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, lambda s, f: stop_all(s))
    failed = None
    while any(p.poll() is None for p in procs):
        for i, p in enumerate(procs):
            code = p.poll()
            if code not in (None, 0, EXIT_PREEMPTED) and failed is None:
                failed = (i, code, time.monotonic())
                print(
                    f"launch: process {i} (pid {p.pid}) exited with {_describe(code)}; "
                    f"the others get {args.grace:g} s to stop",
                    file=sys.stderr,
                    flush=True,
                )
        if failed is not None and time.monotonic() - failed[2] > args.grace:
            print("launch: killing the processes still running", file=sys.stderr, flush=True)
            stop_all(signal.SIGKILL)
        time.sleep(0.1)
    for thread in forwarders:  # (a grandchild still holding the pipe must not hang us)
        thread.join(timeout=5)
    codes = [p.returncode for p in procs]
    if failed is not None:
        others = ", ".join(
            f"process {i} {_describe(c)}" for i, c in enumerate(codes) if i != failed[0]
        )
        print(f"launch: then {others} (status 4: stopped on losing a peer)", file=sys.stderr)
    if failed is None:  # all done, or all stopped together by a forwarded SIGTERM/SIGUSR2
        return EXIT_PREEMPTED if EXIT_PREEMPTED in codes else 0
    return failed[1] if failed[1] > 0 else 128 - failed[1]


def cli() -> None:
    """``jdo-launch``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
