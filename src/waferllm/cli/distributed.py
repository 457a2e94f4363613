"""Running the numeric simulation over several processes or hosts with JAX's own distributed runtime.

`--num-processes N` alone starts N local processes of the same command (loopback coordinator); with
`--coordinator HOST:PORT --process-id I` a process joins a multi-host run that the user starts on each
host. Every process runs the same program (SPMD): the grid's rows and columns are spread over the global
device mesh (jax.devices() of every process), shifts stay collective permutes, and only process 0 prints.
On CPUs the collectives go over Gloo; on GPUs JAX picks NCCL.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from waferllm.cli.args import ArgError

JOIN_TIMEOUT_S = 300  # how long a process waits for the others at the coordinator


def add_distributed_args(p: argparse.ArgumentParser) -> None:
    """--num-processes, --coordinator, --process-id."""
    g = p.add_argument_group("multi-process simulation (JAX distributed runtime)")
    g.add_argument("--num-processes", type=int, default=1,
                   help="processes sharing the grid; alone, starts them locally (default 1: this process)")
    g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="join a multi-host run whose process 0 listens at HOST:PORT (needs --process-id)")
    g.add_argument("--process-id", type=int, default=None, help="this process's rank in 0..N-1 (with --coordinator)")


def check(args) -> None:
    """The flags are consistent, before any work."""
    n = args.num_processes
    if n < 1:
        raise ArgError(f"--num-processes must be >= 1, got {n}")
    if args.coordinator is None and args.process_id is not None:
        raise ArgError("--process-id needs --coordinator HOST:PORT (or drop both to start processes locally)")
    if args.coordinator is not None:
        if args.process_id is None:
            raise ArgError("--coordinator needs --process-id I (this process's rank, 0..N-1)")
        if not 0 <= args.process_id < n:
            raise ArgError(f"--process-id must be in 0..{n - 1} for --num-processes {n}, got {args.process_id}")
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ArgError(f"--coordinator must be HOST:PORT, got {args.coordinator!r}")


def launching(args) -> bool:
    """True when this process should start the local processes rather than compute."""
    return args.num_processes > 1 and args.coordinator is None


def join(args) -> bool:
    """Join the distributed runtime when asked (before any JAX computation); True if this is process 0."""
    if args.coordinator is None:
        return True
    import jax

    # CPU collectives across processes need Gloo (the default is none); GPUs use NCCL whatever this says.
    # Set unconditionally: asking which backend is in use would start it before initialize().
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id, initialization_timeout=JOIN_TIMEOUT_S)
    except (RuntimeError, ValueError) as e:  # unreachable coordinator, timeout, a rank taken twice
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArgError(f"cannot join the run at {args.coordinator} as process {args.process_id}: {first}") from None
    main = args.process_id == 0
    # the collectives' native libraries print to file descriptor 1: send that to stderr so that stdout
    # carries only the command's own output (its --json object)
    sys.stdout.flush()
    out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(out, "w", buffering=1) if main else open(os.devnull, "w")
    return main


def world(devices) -> dict:
    """{"processes", "devices"}: the JAX processes and the devices the grid is spread over (JSON keys)."""
    import jax

    return {"processes": jax.process_count(), "devices": 1 if devices is None else int(devices.devices.size)}


def launch_local(argv: list[str], n: int) -> int:
    """Run `waferllm <argv>` as n local processes over a loopback coordinator; process 0's output is this
    command's. Returns the first failing process's exit code (0 when all succeed)."""
    port = _free_port()
    procs, logs = [], []
    for i in range(n):
        cmd = [sys.executable, "-m", "waferllm.cli", *argv, "--coordinator", f"127.0.0.1:{port}", "--process-id", str(i)]
        log = tempfile.TemporaryFile() if i else None
        # a session of their own: a terminal's Ctrl-C reaches this launcher alone, which stops process 0
        # cleanly (a server then tells the others to stop) instead of interrupting collectives mid-way
        procs.append(subprocess.Popen(cmd, stdout=None if i == 0 else subprocess.DEVNULL, stderr=log,
                                      start_new_session=True, preexec_fn=_die_with_parent))
        logs.append(log)
    stop = lambda signum, frame: procs[0].poll() is None and procs[0].send_signal(signal.SIGTERM)  # noqa: E731
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _wait_all(procs, logs)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            if log is not None:
                log.close()


def _wait_all(procs, logs) -> int:
    """Wait for every process; when one fails, stop the rest (they would wait on its collectives forever)."""
    while True:
        codes = [p.poll() for p in procs]
        bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            i, code = bad[0]
            if i and logs[i] is not None:  # process 0 already wrote its own error line
                logs[i].seek(0)
                lines = [ln for ln in logs[i].read().decode(errors="replace").splitlines() if ln.strip()]
                if lines:
                    print(f"waferllm: process {i} failed: {lines[-1]}", file=sys.stderr)
            return code
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.05)


def _die_with_parent() -> None:
    """In a started process (Linux): SIGTERM when the launcher dies, even by SIGKILL, so that no process is
    left holding a port or waiting on a collective. Elsewhere the launcher's own clean-up is all there is."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
