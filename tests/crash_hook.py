"""Installed in Ray workers by tests/test_pipeline_crash.py (runtime_env worker_process_setup_hook):
a record whose JSON carries `"crash_worker": "segv"` kills the worker process with a real SIGSEGV in
the main pass, `"segv-prepare"` already in the media check both passes run (so in the index pass),
`"hang"` makes it sleep forever — what a crashing or stuck decoder does to a worker."""
import os
import signal
import time


def install() -> None:
    import pipeline.work as work

    original = work._one
    original_prepare = work.prepare

    def prepare(raw, *args, **kwargs):   # runs in both passes (index and main): "segv-prepare" dies in the first
        rec = raw.record if isinstance(raw.record, dict) else {}
        if rec.get("crash_worker") == "segv-prepare":
            if rec.get("crash_log"):
                with open(rec["crash_log"], "a") as f:
                    f.write(f"{os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGSEGV)
        return original_prepare(raw, *args, **kwargs)

    work.prepare = prepare

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
