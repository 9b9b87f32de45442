"""GOP-parallel decoding (issue #14): independent keyframe runs decoded on several threads, each with
its own container, give exactly the sequential decoder's frames, in the same order; errors, the time
limit and an early stop behave as in the sequential path, and no thread or container is left behind."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from processors import video_decode
from processors.errors import VideoDecodeError, VideoTimeoutError
from processors.presets import QWEN25_VL
from processors.video import process_video, probe_video, select_frames
from processors.video_decode import decode_pyav, decode_runs, decode_workers
from video_factory import full_decode, make_clip

VFR_TIMES = [0.0, 0.04, 0.08, 0.2, 0.24, 0.5, 0.54, 0.58, 0.9, 0.94, 1.3, 1.34, 1.38, 1.7, 1.74, 2.1, 2.14,
             2.5, 2.54, 2.58, 2.9, 3.0, 3.1, 3.5]


@pytest.fixture(scope="module")
def gop_clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("gop")
    x264 = lambda params: {"preset": "veryfast", "x264-params": params}  # noqa: E731
    return {
        "h264_bframes": make_clip(d / "bf.mp4", num_frames=120, gop=15, options=x264("bframes=3:b-pyramid=normal")),
        "h264_mkv": make_clip(d / "bf.mkv", num_frames=120, gop=15, options=x264("bframes=3:b-pyramid=normal")),
        "h264_open_gop": make_clip(d / "open.mkv", num_frames=120, gop=20, options=x264("bframes=3:open-gop=1")),
        # x265's default is an open GOP (CRA keyframes with leading pictures)
        "hevc_open_gop": make_clip(d / "hevc.mp4", codec="libx265", num_frames=90, gop=15,
                                   options={"preset": "medium", "x265-params": "log-level=error:bframes=4"}),
        "vp9": make_clip(d / "vp9.webm", codec="libvpx-vp9", num_frames=90, gop=12, width=160, height=96),
        "mpeg4_avi": make_clip(d / "mpeg4.avi", codec="mpeg4", num_frames=90, gop=10, bframes=2),
        "mpeg2_es": make_clip(d / "mpeg2.m2v", codec="mpeg2video", num_frames=90, gop=12, bframes=2),
        "rot90": make_clip(d / "rot90.mp4", rotation=90, num_frames=60, gop=8, bframes=2),
        "vfr": make_clip(d / "vfr.mp4", frame_times=VFR_TIMES, num_frames=len(VFR_TIMES), gop=4),
    }


DENSITIES = [{"fps": 2}, {"fps": 9}, {"nframes": 6}, {"fps": 30}]


def _frames(info, idx, **kw):
    return list(decode_pyav(info, idx, **kw))


def _assert_same(a, b):
    assert [i for i, _ in a] == [i for i, _ in b]
    for (i, x), (_, y) in zip(a, b):
        assert x.dtype == y.dtype == np.uint8 and x.shape == y.shape and np.array_equal(x, y), i


class _Opens:
    """Records every container the decoder opens (and on which thread) and every close."""

    def __init__(self, monkeypatch):
        self.opened, self.closed = [], []
        real_init, real_close = video_decode._Opened.__init__, video_decode._Opened.close

        def init(o, *a, **k):
            real_init(o, *a, **k)
            self.opened.append(threading.current_thread().name)

        def close(o):
            self.closed.append(threading.current_thread().name)
            real_close(o)

        monkeypatch.setattr(video_decode._Opened, "__init__", init)
        monkeypatch.setattr(video_decode._Opened, "close", close)


def _decode_threads():
    return [t for t in threading.enumerate() if t.name.startswith("vlprep-decode")]


@pytest.mark.parametrize("name", ["h264_bframes", "h264_open_gop", "hevc_open_gop", "vp9", "mpeg4_avi", "mpeg2_es",
                                  "rot90", "vfr"])
def test_gop_parallel_equals_sequential_and_full_decode(gop_clips, name, monkeypatch):
    path = gop_clips[name]
    info = probe_video(path)
    full, _ = full_decode(path)
    if info.rotation:
        full = np.stack([video_decode.rotate_frame(f, info.rotation) for f in full])
    opens = _Opens(monkeypatch)
    parallel_runs = 0
    for req in DENSITIES:
        idx, _ = select_frames(info, preset=QWEN25_VL, **req)
        runs = decode_runs(info, idx)
        seq = _frames(info, idx, workers=1)
        assert [i for i, _ in seq] == np.unique(idx).tolist()
        for i, f in seq:
            assert np.array_equal(f, full[i]), (req, i)
        for workers in (2, 3):
            opens.opened.clear()
            _assert_same(_frames(info, idx, workers=workers), seq)
            if len(runs) > 1:  # decoded on the worker threads, one container each (those that got a run)
                assert 1 <= len(opens.opened) <= workers
                assert all(t.startswith("vlprep-decode") for t in opens.opened)
                parallel_runs += 1
    assert parallel_runs >= 4, "the clip should have several keyframe runs at some density"
    assert sorted(opens.opened) == sorted(opens.closed[-len(opens.opened):])
    assert not _decode_threads()


def test_file_without_timestamps_is_one_sequential_run(gop_clips, monkeypatch):
    # what probe_video reports for a file whose frames carry no (or duplicate) pts: indices in
    # output order, one entry point. It never seeks, so it is one run, decoded on the calling thread.
    path = gop_clips["h264_bframes"]
    info = probe_video(path)
    info = dataclasses.replace(info, has_pts=False, frame_pts=np.arange(info.num_frames, dtype=np.int64),
                               key_indices=np.zeros(1, dtype=np.int64))
    idx, _ = select_frames(info, preset=QWEN25_VL, fps=9)
    assert len(decode_runs(info, idx)) == 1
    opens = _Opens(monkeypatch)
    got = _frames(info, idx, workers=4)
    assert opens.opened == [threading.current_thread().name]
    full, _ = full_decode(path)
    assert [i for i, _ in got] == idx.tolist()
    assert all(np.array_equal(f, full[i]) for i, f in got)


def test_runs_split_where_the_sequential_decoder_seeks():
    info = dataclasses.replace(
        _fake_info(300), key_indices=np.array([0, 120, 240], dtype=np.int64))
    t = np.array([0, 15, 30, 119, 120, 135, 239, 250, 299])
    assert [r.tolist() for r in decode_runs(info, t)] == [[0, 15, 30, 119], [120, 135, 239], [250, 299]]
    # a target whose keyframe is at/before the previous target continues the run
    assert [r.tolist() for r in decode_runs(info, np.array([100, 125, 130, 241]))] == [[100], [125, 130], [241]]
    assert [r.tolist() for r in decode_runs(info, np.array([120, 121]))] == [[120, 121]]
    assert [r.tolist() for r in decode_runs(info, np.array([7]))] == [[7]]


def _fake_info(n):
    from fractions import Fraction

    from processors.video_probe import VideoInfo

    return VideoInfo(path="x.mp4", duration=n / 30, num_frames=n, avg_fps=30.0, width=64, height=48, rotation=0,
                     codec="h264", start_time=0.0, is_vfr=False, time_base=Fraction(1, 30),
                     frame_pts=np.arange(n, dtype=np.int64), key_indices=np.zeros(1, dtype=np.int64))


def test_worker_count(monkeypatch):
    monkeypatch.setattr(video_decode.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert video_decode.usable_cores() == 3
    assert [decode_workers(r) for r in (1, 2, 3, 9)] == [1, 2, 3, 3]
    assert [decode_workers(r, 2) for r in (1, 5)] == [1, 2]
    monkeypatch.setattr(video_decode.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert decode_workers(9) == 1


def test_decode_parallelism_is_the_worker_count_decode_pyav_uses(monkeypatch):
    """process_video asks `decode_parallelism` whether the decode runs off its thread: runs × workers × cores."""
    monkeypatch.setattr(video_decode.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    info = dataclasses.replace(_fake_info(300), key_indices=np.array([0, 120, 240], dtype=np.int64))
    three_runs = np.array([299, 5, 130, 5])          # unsorted, repeated: as process_video's indices may be
    assert video_decode.decode_parallelism(info, three_runs) == 2
    assert video_decode.decode_parallelism(info, three_runs, 1) == 1
    assert video_decode.decode_parallelism(info, np.array([5, 30])) == 1   # one run
    assert video_decode.decode_parallelism(info, np.array([], dtype=np.int64)) == 1
    assert video_decode.decode_parallelism(dataclasses.replace(info, has_pts=False), three_runs) == 1


def test_one_run_keeps_the_sequential_path(gop_clips, monkeypatch):
    path = gop_clips["h264_bframes"]
    info = probe_video(path)
    idx = np.array([16, 20, 29])  # all in the GOP starting at 15
    assert len(decode_runs(info, idx)) == 1
    opens = _Opens(monkeypatch)
    assert [i for i, _ in _frames(info, idx, workers=4)] == idx.tolist()
    assert opens.opened == [threading.current_thread().name]


def test_bad_worker_count_is_refused(gop_clips):
    info = probe_video(gop_clips["h264_bframes"])
    with pytest.raises(ValueError, match="workers"):
        _frames(info, np.array([0, 50]), workers=0)
    with pytest.raises(ValueError, match="decode_workers"):
        process_video(gop_clips["h264_bframes"], QWEN25_VL, decode_workers=0)


@pytest.mark.parametrize("cut", [0.45, 0.8])
def test_worker_error_is_the_sequential_error_after_the_same_frames(gop_clips, tmp_path, cut):
    # The file is truncated behind the decoder's back (the info describes the whole file): the
    # sequential path yields the frames before the cut, then raises; the parallel one must yield
    # the same frames and raise the same exception with the same message.
    src = gop_clips["h264_mkv"]  # (Matroska: its header is at the start, so the cut file still opens)
    data = src.read_bytes()
    bad = tmp_path / f"cut_{cut}.mkv"
    bad.write_bytes(data[: int(len(data) * cut)])
    info = dataclasses.replace(probe_video(src), path=str(bad))
    idx, _ = select_frames(info, preset=QWEN25_VL, fps=9)
    assert len(decode_runs(info, idx)) >= 4

    def run(workers):
        got = []
        with pytest.raises(VideoDecodeError) as e:
            for item in decode_pyav(info, idx, workers=workers):
                got.append(item)
        return got, e.value

    seq, seq_err = run(1)
    par, par_err = run(2)
    assert 0 < len(seq) < len(idx)
    _assert_same(par, seq)
    assert type(par_err) is type(seq_err) and str(par_err) == str(seq_err)
    assert not _decode_threads()


def _damaged(gop_clips, tmp_path, damage):
    """(path, info, expected message start): a clip of several runs whose damage lies in a run after
    the first, and the info the decoder is given."""
    import av

    if damage == "truncated":  # cut behind the decoder's back: the info describes the whole file
        src = gop_clips["h264_mkv"]
        bad = tmp_path / "cut.mkv"
        bad.write_bytes(src.read_bytes()[: int(src.stat().st_size * 0.6)])
        return bad, dataclasses.replace(probe_video(src), path=str(bad)), f"{bad}: the stream ended before frame "
    # one packet of a later run gets an impossible NAL length prefix (MP4: 4-byte lengths)
    src = gop_clips["h264_bframes"]
    info = probe_video(src)
    idx, _ = select_frames(info, preset=QWEN25_VL, fps=9)
    target = int(decode_runs(info, idx)[3][1])
    with av.open(str(src)) as c:
        pos = {p.pts: p.pos for p in c.demux(c.streams.video[0]) if p.size}[int(info.frame_pts[target])]
    data = bytearray(src.read_bytes())
    data[pos:pos + 4] = b"\xff\xff\xff\x00"
    bad = tmp_path / "bad_nal.mp4"
    bad.write_bytes(bytes(data))
    return bad, probe_video(bad), f"{bad}: h264 decoder error at pts {int(info.frame_pts[target])} ("


@pytest.mark.parametrize("damage", ["bad_nal_length", "truncated"])
def test_damaged_clip_in_process_video_gives_one_specific_error_and_leaves_nothing_open(
        gop_clips, tmp_path, monkeypatch, damage):
    # Through the whole path (decode workers, the resize thread, the patch rows): any worker count
    # raises the sequential decoder's error, naming the file and what is wrong, after the same frames;
    # no decode or resize thread survives and every container opened is closed.
    path, info, message = _damaged(gop_clips, tmp_path, damage)
    idx, _ = select_frames(info, preset=QWEN25_VL, fps=9)
    assert len(decode_runs(info, idx)) >= 5
    opens = _Opens(monkeypatch)
    errors, frames = [], []
    for workers in (1, 2, 3):
        got = []
        with pytest.raises(VideoDecodeError) as e:
            for item in decode_pyav(info, idx, workers=workers):
                got.append(item)
        frames.append(got)
        with pytest.raises(VideoDecodeError) as e2:
            process_video(path, QWEN25_VL, fps=9, decode_workers=workers, info=info)
        errors += [str(e.value), str(e2.value)]
        assert not [t.name for t in threading.enumerate() if t.name.startswith("vlprep")]
    assert errors[0].startswith(message) and errors == errors[:1] * len(errors)
    assert 0 < len(frames[0]) < len(idx)
    for got in frames[1:]:
        _assert_same(got, frames[0])
    assert len(opens.opened) >= 6 and sorted(opens.closed) == sorted(opens.opened)


def test_open_error_in_a_worker_reaches_the_consumer(gop_clips, tmp_path):
    info = dataclasses.replace(probe_video(gop_clips["h264_bframes"]), path=str(tmp_path / "gone.mp4"))
    idx, _ = select_frames(info, preset=QWEN25_VL, fps=9)
    with pytest.raises(VideoDecodeError, match="cannot reopen for decoding"):
        _frames(info, idx, workers=2)
    assert not _decode_threads()


def test_a_worker_dying_of_a_non_exception_error_does_not_hang_the_consumer(gop_clips, monkeypatch):
    # e.g. SystemExit raised inside a worker thread: the consumer gets it, not an endless wait
    info = probe_video(gop_clips["h264_bframes"])
    idx, _ = select_frames(info, preset=QWEN25_VL, fps=9)
    real = video_decode._decode_targets

    def dies_on_run_1(o, info_, run, *a, **k):
        if run[0] != idx[0]:
            raise SystemExit("worker died")
        yield from real(o, info_, run, *a, **k)

    monkeypatch.setattr(video_decode, "_decode_targets", dies_on_run_1)
    out = {}

    def consume():
        try:
            _frames(info, idx, workers=2, timeout_s=None)
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the consumer waits forever for a run whose worker died"
    assert isinstance(out.get("error"), SystemExit) and str(out["error"]) == "worker died"
    assert not _decode_threads()


def test_timeout_in_workers(gop_clips):
    info = probe_video(gop_clips["h264_bframes"])
    idx, _ = select_frames(info, preset=QWEN25_VL, fps=9)
    with pytest.raises(VideoTimeoutError, match=r"timeout_s=1e-09 s \(\d+ of %d sampled frames done\)" % len(idx)):
        _frames(info, idx, workers=2, timeout_s=1e-9)
    assert not _decode_threads()
    with pytest.raises(VideoTimeoutError, match="timeout_s"):
        process_video(gop_clips["h264_bframes"], QWEN25_VL, fps=9, timeout_s=1e-9, decode_workers=2)
    assert not _decode_threads()


def test_consumer_stopping_early_stops_workers_and_closes_containers(gop_clips, monkeypatch):
    info = probe_video(gop_clips["h264_bframes"])
    idx, _ = select_frames(info, preset=QWEN25_VL, fps=30)
    opens = _Opens(monkeypatch)
    gen = decode_pyav(info, idx, workers=2)
    first = next(gen)
    assert first[0] == idx[0] and len(_decode_threads()) >= 1
    gen.close()
    assert not _decode_threads()
    assert 1 <= len(opens.opened) <= 2 and sorted(opens.closed) == sorted(opens.opened)


def test_consumer_error_in_process_video_stops_workers(gop_clips, monkeypatch):
    import processors.video as video

    def boom(*a, **k):
        raise RuntimeError("resize failed")

    opens = _Opens(monkeypatch)
    monkeypatch.setattr(video, "resize_frames", boom)
    with pytest.raises(RuntimeError, match="resize failed"):
        process_video(gop_clips["h264_bframes"], QWEN25_VL, fps=9, decode_workers=2)
    assert not _decode_threads()
    assert 1 <= len(opens.opened) <= 2 and sorted(opens.closed) == sorted(opens.opened)


def test_frames_held_ahead_of_a_slow_consumer_are_bounded(gop_clips, monkeypatch):
    # Workers may run ahead of the consumer by at most the byte budget (here: 2 frames), the one frame
    # the consumer's own run may add beyond it, and the frame each worker holds while it waits; without
    # the budget a worker would queue its whole run (15 frames).
    path = gop_clips["h264_bframes"]
    info = probe_video(path)
    idx, _ = select_frames(info, preset=QWEN25_VL, fps=30)
    frame_bytes = info.width * info.height * 3
    monkeypatch.setattr(video_decode, "_LOOKAHEAD_BYTES", 2 * frame_bytes)
    produced, lock = [0], threading.Lock()
    real = video_decode._decode_targets

    def counting(*a, **k):
        for item in real(*a, **k):
            with lock:
                produced[0] += 1
            yield item

    monkeypatch.setattr(video_decode, "_decode_targets", counting)
    ahead, got = [], []
    for item in decode_pyav(info, idx, workers=3):
        got.append(item)
        for _ in range(3):  # let the workers run: they are blocked by the budget, not by this thread
            threading.Event().wait(0.002)
        with lock:
            ahead.append(produced[0] - len(got))
    assert [i for i, _ in got] == idx.tolist()
    assert max(ahead) <= 2 + 1 + 3, max(ahead)


def test_process_video_same_patches_with_any_worker_count(gop_clips):
    path = gop_clips["h264_open_gop"]
    one = process_video(path, QWEN25_VL, fps=9, decode_workers=1)
    for w in (2, None):
        r = process_video(path, QWEN25_VL, fps=9, decode_workers=w)
        assert r.frame_indices == one.frame_indices and np.array_equal(r.patches, one.patches)


@pytest.mark.parametrize("workers", [1, 2])
def test_convert_runs_on_the_decoding_thread_and_is_yielded_in_order(gop_clips, workers):
    # `convert` sees every kept frame on the thread that decoded it (a decode worker when the clip
    # runs on several) and its result is yielded in the frame's place, in index order
    info = probe_video(gop_clips["mpeg4_avi"])
    idx, _ = select_frames(info, preset=QWEN25_VL, fps=9)
    plain = dict(_frames(info, idx, workers=1))
    seen = {}

    def convert(i, rgb):
        seen[i] = threading.current_thread().name
        return i, int(rgb.astype(np.int64).sum()), rgb.shape

    got = _frames(info, idx, workers=workers, convert=convert)
    assert [i for i, _ in got] == sorted(plain)
    assert all(v == (i, int(plain[i].astype(np.int64).sum()), plain[i].shape) for i, v in got)
    on_workers = {i for i, name in seen.items() if name.startswith("vlprep-decode")}
    assert on_workers == (set(plain) if workers > 1 else set())
    assert not _decode_threads()


@pytest.mark.parametrize("name", ["mpeg4_avi", "hevc_open_gop", "rot90", "vfr"])
def test_transformers_mode_resizes_on_the_decode_workers_with_the_same_patches(gop_clips, name, monkeypatch):
    # the "transformers" mode resizes each frame on the GOP-parallel worker that decoded it; the
    # patches equal the sequential path's (resize thread + patch rows) bit for bit
    import processors.video as video

    path = gop_clips[name]
    one = process_video(path, QWEN25_VL, fps=9, resize="transformers", decode_workers=1)
    threads = set()
    real = video.resize_frames

    def spy(*a, **k):
        threads.add(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(video, "resize_frames", spy)
    r = process_video(path, QWEN25_VL, fps=9, resize="transformers", decode_workers=2)
    assert threads and all(t.startswith("vlprep-decode") for t in threads), threads
    assert r.frame_indices == one.frame_indices and r.grid_thw == one.grid_thw
    assert np.array_equal(r.patches, one.patches)


def test_job_option_reaches_process_video():
    from pipeline.config import JobConfig
    from processors.encode import EncodeOptions
    from processors.sample import MediaRef
    from processors.plan import video_options

    base = {"sources": [{"path": "x.jsonl"}]}
    cfg = JobConfig.from_dict(base)
    assert cfg.encode_options()["video_decode_workers"] == 1  # ray.num_cpus: one core per task
    cfg = JobConfig.from_dict({**base, "ray": {"num_cpus": 2}})
    assert cfg.encode_options()["video_decode_workers"] == 2
    cfg = JobConfig.from_dict({**base, "video": {"decode_workers": 3}})
    opts = EncodeOptions.from_dict(cfg.encode_options())
    assert video_options(MediaRef(kind="video", path="v.mp4"), opts, QWEN25_VL)["decode_workers"] == 3
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="decode_workers"):
        JobConfig.from_dict({**base, "video": {"decode_workers": 0}})
