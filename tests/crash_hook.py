"""Installed in Ray workers by tests/test_pipeline_crash.py (runtime_env worker_process_setup_hook):
a record whose JSON carries `"crash_worker": "segv"` kills the worker process with a real SIGSEGV,
`"hang"` makes it sleep forever — what a crashing or stuck decoder does to a worker."""
import os
import signal
import time


def install() -> None:
    import pipeline.work as work

    original = work._one

    def one(raw, *args, **kwargs):
        rec = raw.record if isinstance(raw.record, dict) else {}
        how = rec.get("crash_worker")
        if how and rec.get("crash_log"):
            with open(rec["crash_log"], "a") as f:
                f.write(f"{os.getpid()}\n")
        if how == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif how == "hang":
            while True:
                time.sleep(60)
        return original(raw, *args, **kwargs)

    work._one = one
