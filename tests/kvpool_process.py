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
