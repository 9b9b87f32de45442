"""Installed in Ray workers by tests/test_pipeline_crash.py (runtime_env worker_process_setup_hook):
a record whose JSON carries `"crash_worker": "segv"` kills the worker process with a real SIGSEGV in
the main pass, `"segv-prepare"` already in the media check both passes run (so in the index pass),
`"hang"` makes it sleep forever — what a crashing or stuck decoder does to a worker. With
`"crash_log": PATH` each attempt appends the worker's pid there first."""
import os
import signal
import time


def _misbehave(raw, modes: tuple[str, ...]) -> None:
    rec = raw.record if isinstance(raw.record, dict) else {}
    how = rec.get("crash_worker")
    if how not in modes:
        return
    if rec.get("crash_log"):
        with open(rec["crash_log"], "a") as f:
            f.write(f"{os.getpid()}\n")
    if how == "hang":
        while True:
            time.sleep(60)
    os.kill(os.getpid(), signal.SIGSEGV)


def install() -> None:
    import pipeline.work as work

    original_one, original_prepare = work._one, work.prepare

    def prepare(raw, *args, **kwargs):   # both passes run it: "segv-prepare" dies in the first (index)
        _misbehave(raw, ("segv-prepare",))
        return original_prepare(raw, *args, **kwargs)

    def one(raw, *args, **kwargs):
        _misbehave(raw, ("segv", "hang"))
        return original_one(raw, *args, **kwargs)

    work.prepare, work._one = prepare, one
