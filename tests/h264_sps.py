"""A small bit-level H.264 SPS rewriter for the tests: drop the VUI `bitstream_restriction` part
(max_num_reorder_frames, max_dec_frame_buffering), as some encoders other than x264 do, so FFmpeg's
decoder has to learn the reorder depth from the stream. `strip_reorder_info(src, dst)` remuxes a
Matroska/MP4 H.264 file with every SPS (avcC extradata and in-band) rewritten, packets unchanged."""
from __future__ import annotations

from pathlib import Path

from processors.h264_sps import _restriction_flag_pos, _unescape


def _escape(rbsp: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def strip_sps(nal: bytes) -> bytes:
    """One SPS NAL unit (header byte included, emulation-prevented) without bitstream_restriction."""
    assert nal[0] & 0x1F == 7, "not an SPS"
    rbsp = _unescape(nal[1:])
    pos = _restriction_flag_pos(rbsp)
    if pos is None:
        return nal
    bits = "".join(f"{b:08b}" for b in rbsp)[:pos] + "0" + "1"  # flag cleared, rbsp_stop_one_bit
    bits += "0" * (-len(bits) % 8)
    out = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
    return nal[:1] + _escape(out)


def _strip_avcc(extradata: bytes) -> bytes:
    out = bytearray(extradata[:5])
    n_sps, p = extradata[5] & 0x1F, 6
    out.append(extradata[5])
    for _ in range(n_sps):
        size = int.from_bytes(extradata[p:p + 2], "big")
        sps = strip_sps(extradata[p + 2:p + 2 + size])
        out += len(sps).to_bytes(2, "big") + sps
        p += 2 + size
    out += extradata[p:]  # PPS (and the High-profile tail) unchanged
    return bytes(out)


def _strip_length_prefixed(data: bytes, nal_len: int = 4) -> bytes:
    out, p = bytearray(), 0
    while p < len(data):
        size = int.from_bytes(data[p:p + nal_len], "big")
        nal = data[p + nal_len:p + nal_len + size]
        if nal and nal[0] & 0x1F == 7:
            nal = strip_sps(nal)
        out += len(nal).to_bytes(nal_len, "big") + nal
        p += nal_len + size
    return bytes(out)


def strip_reorder_info(src: str | Path, dst: str | Path) -> Path:
    """Remux the H.264 `src` (MKV or MP4, avcC) to `dst` with every SPS rewritten by `strip_sps`."""
    import av

    dst = Path(dst)
    with av.open(str(src)) as inp, av.open(str(dst), mode="w") as out:
        ist = inp.streams.video[0]
        assert ist.codec_context.name == "h264" and ist.codec_context.extradata[0] == 1, "needs avcC H.264"
        ost = out.add_stream_from_template(ist)
        ost.codec_context.extradata = _strip_avcc(ist.codec_context.extradata)
        nal_len = (ist.codec_context.extradata[4] & 3) + 1
        for packet in inp.demux(ist):
            if packet.dts is None and packet.size == 0:
                continue
            new = av.Packet(_strip_length_prefixed(bytes(packet), nal_len))
            new.pts, new.dts, new.time_base = packet.pts, packet.dts, packet.time_base
            new.is_keyframe = packet.is_keyframe
            new.stream = ost
            out.mux(new)
    return dst
