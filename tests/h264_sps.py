"""A small bit-level H.264 SPS rewriter for the tests: drop the VUI `bitstream_restriction` part
(max_num_reorder_frames, max_dec_frame_buffering), as some encoders other than x264 do, so FFmpeg's
decoder has to learn the reorder depth from the stream. `strip_reorder_info(src, dst)` remuxes a
Matroska/MP4 H.264 file with every SPS (avcC extradata and in-band) rewritten, packets unchanged."""
from __future__ import annotations

from pathlib import Path


class _Bits:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            v = (v << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _unescape(ebsp: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for b in ebsp:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _escape(rbsp: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _scaling_list(r: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + r.se() + 256) % 256
        last = nxt or last


def _hrd(r: _Bits) -> None:
    cpb_cnt = r.ue() + 1
    r.u(4), r.u(4)
    for _ in range(cpb_cnt):
        r.ue(), r.ue(), r.u(1)
    r.u(20)


def _restriction_flag_pos(rbsp: bytes) -> int | None:
    """Bit offset (in the RBSP after the NAL header byte) of bitstream_restriction_flag, or None
    when the SPS has no VUI."""
    r = _Bits(rbsp)
    profile = r.u(8)
    r.u(16)  # constraint flags, level_idc
    r.ue()  # seq_parameter_set_id
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma = r.ue()
        if chroma == 3:
            r.u(1)
        r.ue(), r.ue(), r.u(1)
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.u(1):
                    _scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1), r.se(), r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue(), r.u(1), r.ue(), r.ue()  # max_num_ref_frames, gaps, width, height
    if not r.u(1):  # frame_mbs_only_flag
        r.u(1)
    r.u(1)  # direct_8x8_inference_flag
    if r.u(1):  # frame_cropping_flag
        r.ue(), r.ue(), r.ue(), r.ue()
    if not r.u(1):  # vui_parameters_present_flag
        return None
    if r.u(1) and r.u(8) == 255:  # aspect_ratio_info
        r.u(32)
    if r.u(1):  # overscan_info_present
        r.u(1)
    if r.u(1):  # video_signal_type_present
        r.u(4)
        if r.u(1):
            r.u(24)
    if r.u(1):  # chroma_loc_info_present
        r.ue(), r.ue()
    if r.u(1):  # timing_info_present
        r.u(65)
    nal_hrd = r.u(1)
    if nal_hrd:
        _hrd(r)
    vcl_hrd = r.u(1)
    if vcl_hrd:
        _hrd(r)
    if nal_hrd or vcl_hrd:
        r.u(1)  # low_delay_hrd_flag
    r.u(1)  # pic_struct_present_flag
    return r.pos


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
