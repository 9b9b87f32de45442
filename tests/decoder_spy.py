"""A Ray worker setup hook (`runtime_env={"worker_process_setup_hook": "decoder_spy.record_thread_counts"}`)
that records, for every decoder container vlprep closes in that worker, the file and the thread count
of its opened codec context (FFmpeg's actual count once the decoder is open: 0 → the cores + 1), one
JSON line per container in the file named by $VLPREP_DECODER_SPY. The decode itself is untouched."""
from __future__ import annotations

import json
import os


def record_thread_counts() -> None:
    from processors import video_decode

    log = os.environ["VLPREP_DECODER_SPY"]
    close = video_decode._Opened.close

    def spied_close(self) -> None:
        line = {"path": self.container.name, "thread_count": self.cc.thread_count,
                "opened": self.cc.is_open, "pid": os.getpid()}
        with open(log, "a") as f:
            f.write(json.dumps(line) + "\n")
        close(self)

    video_decode._Opened.close = spied_close
