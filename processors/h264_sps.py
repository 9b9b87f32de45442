"""H.264 SPS reading: whether a stream's sequence parameter set lacks the VUI `bitstream_restriction`
(max_num_reorder_frames), as some encoders other than x264 write it. FFmpeg's decoder then starts at a
guessed reorder depth and drops the first picture that needs a deeper one; `video_decode` opens such
streams with `strict=strict`, which makes it take the depth from the level's DPB size instead."""
from __future__ import annotations


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
    """RBSP from an emulation-prevented NAL payload (drops each 0x03 after two zero bytes)."""
    out, zeros = bytearray(), 0
    for b in ebsp:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
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


def restriction_flag(sps_nal: bytes) -> int:
    """bitstream_restriction_flag of one SPS NAL unit (header byte included, emulation-prevented);
    0 when it has no VUI."""
    rbsp = _unescape(sps_nal[1:])
    pos = _restriction_flag_pos(rbsp)
    if pos is None:
        return 0
    r = _Bits(rbsp)
    r.pos = pos
    return r.u(1)


def extradata_sps(extradata: bytes) -> list[bytes]:
    """The SPS NAL units in a decoder's extradata: avcC (MP4/MKV) or Annex B (start codes)."""
    if not extradata:
        return []
    if extradata[0] == 1 and len(extradata) >= 7:  # avcC
        out, p = [], 6
        for _ in range(extradata[5] & 0x1F):
            size = int.from_bytes(extradata[p:p + 2], "big")
            out.append(extradata[p + 2:p + 2 + size])
            p += 2 + size
        return out
    nals = [n.lstrip(b"\x00") for n in extradata.split(b"\x00\x00\x01")]
    return [n.rstrip(b"\x00") for n in nals if n and n[0] & 0x1F == 7]


def lacks_reorder_info(extradata: bytes | None) -> bool:
    """Whether the H.264 extradata holds an SPS without VUI bitstream_restriction (no reorder info).
    False where it holds no SPS (in-band only) or one that does not parse."""
    try:  # Baseline (profile_idc 66) has no B slices: nothing to reorder, the decoder's 0 is exact
        return any(len(s) > 1 and s[1] != 66 and restriction_flag(s) == 0
                   for s in extradata_sps(bytes(extradata or b"")))
    except IndexError:  # truncated SPS
        return False
