"""Known gap (not a test; run it by hand): H.264 in Matroska whose SPS has no VUI bitstream_restriction,
with a B-pyramid. A fresh FFmpeg decoder starts at the probe's reorder depth (1 here, 2 with the info),
and raises it only on meeting an out-of-order picture, which it then drops (FFmpeg's own full decode
of this file returns 119 of 120 frames). The sequential path succeeds where an earlier part of the
same decode already taught the decoder the depth; each GOP-parallel worker's first run starts fresh,
so `decode_pyav(workers=2)` raises "frame 31 ... was never produced" on targets [16, 26, 31] where
`workers=1` returns all three equal to the source. Denser samplings fail on every path.
Fix directions (session 7 notes): on an overshot target, keep decoding up to the target's own packet
and re-decode the span if `reorder_depth` grew; or preset a deeper reorder depth on fresh decoders.

    cd tests && PYTHONPATH=.. python repro_h264_no_reorder_info_mkv.py [OUT_DIR]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import av
import numpy as np

from h264_sps import _Bits, _restriction_flag_pos, _unescape, strip_reorder_info
from processors.presets import QWEN25_VL
from processors.video import probe_video, select_frames
from processors.video_decode import decode_pyav, decode_runs
from video_factory import full_decode, make_clip


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="novui"))
    src = make_clip(out / "src.mkv", num_frames=120, gop=15,
                    options={"preset": "veryfast", "x264-params": "bframes=3:b-pyramid=normal"})
    dst = strip_reorder_info(src, out / "novui.mkv")
    for p in (src, dst):
        with av.open(str(p)) as c:
            cc = c.streams.video[0].codec_context
            ed = cc.extradata
            n = int.from_bytes(ed[6:8], "big")
            rbsp = _unescape(ed[9:8 + n])
            b = _Bits(rbsp)
            b.pos = _restriction_flag_pos(rbsp)
            print(p.name, "bitstream_restriction_flag", b.u(1), "| plain-open reorder_depth", cc.reorder_depth)
    ref, _ = full_decode(src)
    full, _ = full_decode(dst)
    print("full decode: source", len(ref), "frames; stripped", len(full), "frames")
    info = probe_video(dst)

    def run(idx, w):
        try:
            got = list(decode_pyav(info, np.asarray(idx), workers=w))
            assert all(np.array_equal(f, ref[i]) for i, f in got)
            return f"ok ({len(got)} frames == source)"
        except Exception as e:  # noqa: BLE001
            return f"{type(e).__name__}: {str(e).split(': ', 1)[-1][:80]}"

    for idx in ([16, 26, 31], select_frames(info, preset=QWEN25_VL, fps=6)[0].tolist()):
        print("targets", idx, "runs", [r.tolist() for r in decode_runs(info, np.asarray(idx))])
        for w in (1, 2, 3):
            print(f"  workers={w}:", *sorted({run(idx, w) for _ in range(3)}), sep=" | ")


if __name__ == "__main__":
    main()
