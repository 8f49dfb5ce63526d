"""A kvpool binary as the Python tests start it: a child process whose stdout is read
line by line on a thread, so that a test can wait for the line a service prints when
it is ready ("kvpool-manager listening on ", "kvpool-worker http on ", ...) and read
the address that follows. Shared by tests/dashboard, tests/integration and
tests/external."""
import subprocess
import sys
import threading
import time


class Process:
    """A child process whose stdout is read line by line on a thread."""

    def __init__(self, argv):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, prefix, timeout=60):
        """What follows `prefix` on the first line that starts with it."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line[len(prefix):]
                left = deadline - time.time()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.argv[0]}: no line '{prefix}' (got {self.lines})")
                self.cond.wait(left)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Node:
    """A kvpool-manager (tiny-gpt2's geometry, auth on) and one kvpool-worker on
    loopback, for the tests of the worker's HTTP API. Tokens: op-token (operator,
    worker), tok-a (tenant-a), tok-b (tenant-b). Use as a context manager."""

    def __init__(self, bin_dir, tmp, model="tiny-gpt2", worker_args=()):
        import os
        self.procs = []
        tokens = os.path.join(tmp, "tokens")
        with open(tokens, "w") as f:
            f.write("op-token operator worker\ntok-a tenant-a client\ntok-b tenant-b client\n")
        with open(os.path.join(tmp, "op"), "w") as f:
            f.write("op-token\n")
        try:
            manager = self._start([os.path.join(bin_dir, "kvpool-manager"), "--listen",
                                   "127.0.0.1:0", "--http", "127.0.0.1:0", "--model",
                                   "tiny-gpt2", "--block-size", "16", "--num-blocks", "256",
                                   "--auth-token-file", tokens])
            grpc_address = manager.wait_for("kvpool-manager listening on ")
            self.manager_http = manager.wait_for("http on ")
            worker = self._start([os.path.join(bin_dir, "kvpool-worker"), "--manager",
                                  grpc_address, "--listen", "127.0.0.1:0", "--http",
                                  "127.0.0.1:0", "--model", model, "--threads", "1",
                                  "--token-file", os.path.join(tmp, "op")] + list(worker_args))
            self.http = worker.wait_for("kvpool-worker http on ")
            worker.wait_for("kvpool-worker attached")
        except BaseException:
            self.stop()
            raise

    def _start(self, argv):
        p = Process(argv)
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            p.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
