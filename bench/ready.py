#!/usr/bin/env python3
"""Time from process start to first answered request, for bench/run.

Starts BINARY (with the caller's environment, WXAUTH_LISTEN set to a free loopback port) ROUNDS
times, each time polling `GET PATH` on a raw socket every millisecond until an HTTP 200 comes
back, then stops it. WXAUTH_DATABASE is DIRECTORY/ready.db: deleted before each round when FRESH
is "fresh" (first start: schema created), kept otherwise (a restart). Prints one line:

    READY rounds=N median_ms=M min_ms=M max_ms=M

    bench/ready.py BINARY PATH DIRECTORY fresh|existing ROUNDS
"""

import os
import signal
import socket
import statistics
import subprocess
import sys
import time

DEADLINE = 10.0


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answered(port, request):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(request)
            return connection.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def one_round(binary, path, directory, fresh):
    database = os.path.join(directory, "ready.db")
    if fresh:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(database + suffix):
                os.remove(database + suffix)
    port = free_port()
    environment = dict(os.environ, WXAUTH_LISTEN=f"127.0.0.1:{port}", WXAUTH_DATABASE=database)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    started = time.perf_counter()
    process = subprocess.Popen([binary], env=environment, cwd=directory,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not answered(port, request):
            if time.perf_counter() - started > DEADLINE or process.poll() is not None:
                sys.exit(f"{binary} did not answer within {DEADLINE}s (exit {process.poll()})")
            time.sleep(0.001)
        return (time.perf_counter() - started) * 1000
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main():
    binary, path, directory, fresh, rounds = sys.argv[1:6]
    times = [one_round(binary, path, directory, fresh == "fresh") for _ in range(int(rounds))]
    print(f"READY rounds={len(times)} median_ms={statistics.median(times):.1f} "
          f"min_ms={min(times):.1f} max_ms={max(times):.1f}")


if __name__ == "__main__":
    main()
