"""Grounding (boxes, referring phrases, points) in the three Qwen-VL text formats, spec §12.

Formats (DECISIONS.md rows "grounding, ..."):
  "qwen2-vl"   <|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>...
               0-1000 on the ORIGINAL image; encode clamp(round(x / W * 1000), 0, 1000) (half-even),
               decode x' / 1000 * W. Quadrilaterals: <|quad_start|>(x1,y1),...,(x4,y4)<|quad_end|>.
  "qwen2.5-vl" JSON {"bbox_2d": [x1, y1, x2, y2], "label": ...} / {"point_2d": [x, y], "label": ...}
               (one dict or a list, bare or inside a ```json fence), and
               <points x1=".." y1=".." alt="..">phrase</points>. Absolute pixels on the RESIZED image
               (H', W') = smart_resize(H, W, 28, band): encode clamp(round(x * W' / W), 0, W' - 1),
               decode int(x' / W' * W) (the cookbook's rule).
  "qwen3-vl"   the Qwen2.5-VL JSON forms (bbox_2d / point_2d, <points>), coordinates relative 0-1000 on
               the ORIGINAL image as in qwen2-vl (the Qwen3-VL cookbooks: x' / 1000 * W); encode
               clamp(round(x / W * 1000), 0, 1000). Independent of the resize, so no band is needed.
  "qwen-vl"    <ref>phrase</ref><box>(x1,y1),(x2,y2)</box>...; encode clamp(int(x / W * 1000), 0, 999),
               decode x' / 1000 * W (the inverse of the encoding; §12.1 notes the sources disagree).
  "pixel"      no text form: structured records [{"bbox": [x1, y1, x2, y2], "label": ...},
               {"point": [x, y], "label": ...}] in ORIGINAL-image pixels (`objects_from_pixels`).
               Numbers written in free text are never auto-detected as boxes.

Every decoded object is in original-image pixels. Sizes are (height, width), as everywhere in vlprep.
Clamping is part of each format's official encoding; problems (out of image, swapped, degenerate,
collapsed by quantisation, unsupported shape, malformed markup, truncated JSON) are always reported
and never silently repaired beyond that clamp.
"""
from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Union

from .errors import GroundingError
from .presets import QWEN25_VL, Preset, get_preset
from .sizing import smart_resize

TEXT_FORMATS = ("qwen2-vl", "qwen2.5-vl", "qwen-vl", "qwen3-vl")
JSON_FORMATS = ("qwen2.5-vl", "qwen3-vl")  # bbox_2d / point_2d JSON and <points> XML
LABEL_STYLES = ("auto", "none")


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str | None = None


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str | None = None


@dataclass(frozen=True)
class Quad:
    """Four corner points (Qwen2-VL <|quad_start|>); no Qwen2.5-VL or Qwen-VL text form exists."""

    points: tuple[tuple[float, float], ...]
    label: str | None = None


GroundingObject = Union[Box, Point, Quad]


@dataclass
class GroundingSpan:
    """One grounding construct in a text: text[start:end] is replaced as a whole on conversion.

    `raw` holds the coordinates as written (one tuple per object); `objects` the decoded ones.
    `style`: "tokens" (qwen2-vl), "ref_box" (qwen-vl), "json" (a list), "json_object" (one dict) or
    "points_xml" (qwen2.5-vl).
    `fence`: (opening, closing) text of a ```json fence that holds only this JSON; kept verbatim when
    the span is re-rendered as Qwen2.5-VL JSON, dropped for the token formats.
    `truncated`: the JSON was cut off and only its complete elements were parsed (cookbook repair).
    """

    start: int
    end: int
    objects: list[GroundingObject]
    raw: list[tuple[float, ...]]
    style: str
    fence: tuple[str, str] | None = None
    truncated: bool = False


@dataclass(frozen=True)
class GroundingProblem:
    kind: str  # out_of_image | swapped | degenerate | collapsed | unsupported | malformed | truncated
    message: str
    span: int | None = None  # index into the parsed spans
    object: int | None = None  # index inside the span


@dataclass(frozen=True)
class ObjectChange:
    span: int
    object: int
    shape: str  # box | point | quad
    label: str | None
    before: tuple[float, ...]  # as written in the source format
    pixels: tuple[float, ...]  # decoded, original-image pixels
    after: tuple[float, ...] | None  # as written in the target format (None: not converted)


@dataclass
class GroundingReport:
    src_format: str
    dst_format: str
    changes: list[ObjectChange] = field(default_factory=list)
    problems: list[GroundingProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def n_boxes(self) -> int:
        return sum(1 for c in self.changes if c.shape == "box")

    def to_dict(self) -> dict:
        """JSON-serialisable form for a sample's meta.json ("boxes before/after")."""
        return {
            "src_format": self.src_format,
            "dst_format": self.dst_format,
            "objects": [
                {"shape": c.shape, "label": c.label, "before": list(c.before), "pixels": list(c.pixels),
                 "after": None if c.after is None else list(c.after)}
                for c in self.changes
            ],
            "problems": [{"kind": p.kind, "message": p.message, "span": p.span, "object": p.object}
                         for p in self.problems],
        }


# ------------------------------------------------------------------ coordinates


def _fmt_name(fmt: str | Preset) -> str:
    if isinstance(fmt, Preset):
        return fmt.grounding
    name = str(fmt).strip().lower()
    aliases = {"qwen25-vl": "qwen2.5-vl", "qwen2.5vl": "qwen2.5-vl", "qwen2vl": "qwen2-vl", "qwenvl": "qwen-vl",
               "qwen3vl": "qwen3-vl"}
    name = aliases.get(name, name)
    if name == "pixel":
        return name
    if name not in TEXT_FORMATS:
        raise GroundingError(f"unknown grounding format {fmt!r}; choose one of {list(TEXT_FORMATS) + ['pixel']}")
    return name


def uses_resized_size(fmt: str | Preset) -> bool:
    """Whether `fmt` writes coordinates on the resized (model-input) image, so decoding needs its size."""
    return _fmt_name(fmt) == "qwen2.5-vl"


def _sizes(original_size, resized_size, preset: Preset | None = None) -> tuple[int, int, int, int]:
    """(H, W, H', W'); the resized size defaults to smart_resize with the preset's image band."""
    h, w = (int(v) for v in original_size)
    if h <= 0 or w <= 0:
        raise GroundingError(f"original_size must be positive (height, width), got {original_size}")
    if resized_size is None:
        p = preset if preset is not None and preset.grounding == "qwen2.5-vl" else QWEN25_VL
        rh, rw = smart_resize(h, w, p.factor, p.min_pixels, p.max_pixels)
    else:
        rh, rw = (int(v) for v in resized_size)
    return h, w, rh, rw


def encode_coord(value: float, fmt: str, size: int, resized: int | None = None) -> int:
    """One original-pixel coordinate along an axis of `size` pixels, written in `fmt` (official rules)."""
    if fmt in ("qwen2-vl", "qwen3-vl"):
        return min(max(round(value / size * 1000), 0), 1000)
    if fmt == "qwen2.5-vl":
        return min(max(round(value * resized / size), 0), resized - 1)
    if fmt == "qwen-vl":
        return min(max(int(value / size * 1000), 0), 999)
    raise GroundingError(f"no coordinate encoding for format {fmt!r}")


def decode_coord(value: float, fmt: str, size: int, resized: int | None = None) -> float:
    """A coordinate as written in `fmt` back to original-image pixels."""
    if fmt in ("qwen2-vl", "qwen-vl", "qwen3-vl"):
        return value / 1000 * size
    if fmt == "qwen2.5-vl":
        return int(value / resized * size)
    raise GroundingError(f"no coordinate decoding for format {fmt!r}")


def _xy_axes(n: int) -> list[int]:
    return [i % 2 for i in range(n)]  # 0 = x (width), 1 = y (height)


def _decode_raw(raw: tuple[float, ...], fmt: str, dims) -> tuple[float, ...]:
    h, w, rh, rw = dims
    return tuple(
        decode_coord(v, fmt, w if ax == 0 else h, rw if ax == 0 else rh) for v, ax in zip(raw, _xy_axes(len(raw)))
    )


def _coords(obj: GroundingObject) -> tuple[float, ...]:
    if isinstance(obj, Box):
        return (obj.x1, obj.y1, obj.x2, obj.y2)
    if isinstance(obj, Point):
        return (obj.x, obj.y)
    return tuple(c for p in obj.points for c in p)


def _shape(obj: GroundingObject) -> str:
    return "box" if isinstance(obj, Box) else "point" if isinstance(obj, Point) else "quad"


def _make(shape: str, coords: tuple[float, ...], label: str | None) -> GroundingObject:
    if shape == "box":
        return Box(*coords, label=label)
    if shape == "point":
        return Point(*coords, label=label)
    return Quad(tuple(zip(coords[0::2], coords[1::2])), label=label)


def encode_object(obj: GroundingObject, fmt: str, *, original_size, resized_size=None) -> tuple[int, ...]:
    """The integer coordinates `obj` (original pixels) takes in `fmt`."""
    fmt = _fmt_name(fmt)
    h, w, rh, rw = _sizes(original_size, resized_size)
    c = _coords(obj)
    return tuple(encode_coord(v, fmt, w if ax == 0 else h, rw if ax == 0 else rh) for v, ax in zip(c, _xy_axes(len(c))))


# ------------------------------------------------------------------ problems


def check_object(obj: GroundingObject, original_size) -> list[tuple[str, str]]:
    """(kind, message) for each problem of one decoded object, before any clamping."""
    h, w = (int(v) for v in original_size)
    c = _coords(obj)
    out = []
    xs, ys = c[0::2], c[1::2]
    if min(xs) < 0 or max(xs) > w or min(ys) < 0 or max(ys) > h:
        out.append(("out_of_image", f"{_shape(obj)} {_fmt_num(c)} extends beyond the {w}x{h} (WxH) image; "
                                    f"coordinates will be clamped by the target format"))
    if isinstance(obj, Box):
        if obj.x2 < obj.x1 or obj.y2 < obj.y1:
            out.append(("swapped", f"box {_fmt_num(c)} has x2 < x1 or y2 < y1 (corners not top-left, bottom-right)"))
        elif obj.x2 == obj.x1 or obj.y2 == obj.y1:
            out.append(("degenerate", f"box {_fmt_num(c)} has zero width or height"))
    return out


def check_objects(objects: Iterable[GroundingObject], original_size) -> list[GroundingProblem]:
    return [
        GroundingProblem(kind, msg, None, i) for i, obj in enumerate(objects) for kind, msg in check_object(obj, original_size)
    ]


def _fmt_num(c) -> str:
    return "[" + ", ".join(f"{v:g}" for v in c) + "]"


# ------------------------------------------------------------------ parsing

_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_PAIR = r"\(" + _NUM + r"," + _NUM + r"\)"
_PAIR_RE = re.compile(_PAIR)
_Q2_BOX = r"<\|box_start\|>\s*" + _PAIR + r"\s*,\s*" + _PAIR + r"\s*<\|box_end\|>"
_Q2_QUAD = r"<\|quad_start\|>\s*" + r"\s*,\s*".join([_PAIR] * 4) + r"\s*<\|quad_end\|>"
_Q2_SHAPE_RE = re.compile(f"(?:{_Q2_BOX})|(?:{_Q2_QUAD})")
_Q2_GROUP_RE = re.compile(
    r"(?:<\|object_ref_start\|>(?P<ref>(?:(?!<\|object_ref_(?:start|end)\|>).)*?)<\|object_ref_end\|>)?"
    r"(?P<shapes>(?:(?:" + _Q2_BOX + r")|(?:" + _Q2_QUAD + r"))+)",
    re.S,
)
_Q2_OPEN_RE = re.compile(r"<\|(?:box|quad)_start\|>")
_V1_BOX = r"<box>\s*" + _PAIR + r"\s*,\s*" + _PAIR + r"\s*</box>"
_V1_BOX_RE = re.compile(_V1_BOX)
_V1_GROUP_RE = re.compile(
    r"(?:<ref>(?P<ref>(?:(?!</?ref>).)*?)</ref>)?(?P<shapes>(?:" + _V1_BOX + r")+)", re.S
)
_V1_OPEN_RE = re.compile(r"<box>")
_FENCE_RE = re.compile(r"```json[^\n`]*\n?")
_POINTS_RE = re.compile(r"<points\b(?P<attrs>[^>]*)>(?P<phrase>.*?)</points>", re.S)
_ATTR_RE = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


def _token_spans(text: str, fmt: str, dims) -> tuple[list[GroundingSpan], list[GroundingProblem]]:
    group_re, open_re = (_Q2_GROUP_RE, _Q2_OPEN_RE) if fmt == "qwen2-vl" else (_V1_GROUP_RE, _V1_OPEN_RE)
    spans = []
    for m in group_re.finditer(text):
        label = m.group("ref")
        raws = [
            tuple(float(v) for pair in _PAIR_RE.findall(shape.group(0)) for v in pair)
            for shape in _shape_iter(m.group("shapes"), fmt)
        ]
        objects = [
            _make("box" if len(r) == 4 else "quad", _decode_raw(r, fmt, dims), label) for r in raws
        ]
        spans.append(GroundingSpan(m.start(), m.end(), objects, [_intify(r) for r in raws],
                                   "tokens" if fmt == "qwen2-vl" else "ref_box"))
    problems = []
    covered = [(s.start, s.end) for s in spans]
    for m in open_re.finditer(text):
        if not any(a <= m.start() < b for a, b in covered):
            snippet = text[m.start():m.start() + 60]
            problems.append(GroundingProblem("malformed", f"unparseable {fmt} grounding markup at char {m.start()}: {snippet!r}"))
    return spans, problems


def _shape_iter(shapes: str, fmt: str):
    return _Q2_SHAPE_RE.finditer(shapes) if fmt == "qwen2-vl" else _V1_BOX_RE.finditer(shapes)


def _intify(raw: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(int(v) if float(v).is_integer() else v for v in raw)


def _scan_json(text: str, i: int) -> tuple[int | None, list[int]]:
    """Bracket scan from text[i] ('[' or '{'), honouring strings.

    Returns (end index of the whole value or None if the text ends first, end indices of each complete
    top-level element when the value is a list).
    """
    depth, in_str, esc, elems = 0, False, False, []
    quote = ""
    for j in range(i, len(text)):
        ch = text[j]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                in_str = False
            continue
        if ch in "\"'":
            in_str, quote = True, ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return j + 1, elems
            if depth == 1 and text[i] == "[":
                elems.append(j + 1)
    return None, elems


def _loads(s: str):
    try:
        return json.loads(s)
    except ValueError:
        # the cookbook parses with ast.literal_eval, which also takes single quotes
        return ast.literal_eval(s)


def _decode_json_at(text: str, i: int, limit: int) -> tuple[object, int, bool] | None:
    """(value, end, truncated) for the JSON value starting at text[i] and ending before `limit`.

    A list cut off before its closing bracket keeps its complete elements (the cookbook's repair:
    cut after the last complete object, append "]"); the span then runs to `limit`.
    """
    seg = text[:limit]
    end, elems = _scan_json(seg, i)
    try:
        if end is not None:
            return _loads(seg[i:end]), end, False
        if seg[i] == "[" and elems:
            return _loads(seg[i:elems[-1]] + "]"), limit, True
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return None


def _as_objects(value, dims, fmt: str = "qwen2.5-vl") -> tuple[list[GroundingObject], list[tuple]] | None:
    """Decoded objects + raw coordinates if `value` is a grounding dict or a list of them; else None."""
    items = value if isinstance(value, list) else [value]
    if not items:
        return None
    objects, raws = [], []
    for it in items:
        if not isinstance(it, dict):
            return None
        if "bbox_2d" in it:
            coords, shape = it["bbox_2d"], "box"
        elif "point_2d" in it:
            coords, shape = it["point_2d"], "point"
        else:
            return None
        n = 4 if shape == "box" else 2
        if not isinstance(coords, (list, tuple)) or len(coords) != n or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords
        ):
            return None
        if not all(_finite(c) for c in coords):
            raise GroundingError(f"{shape} {_show_coords(coords)} has a coordinate that is not a finite number "
                                 f"(NaN, Infinity or beyond float range)")
        label = it.get("label")
        label = None if label is None else str(label)
        raw = tuple(coords)
        raws.append(raw)
        objects.append(_make(shape, _decode_raw(raw, fmt, dims), label))
    return objects, raws


def _finite(c) -> bool:
    try:
        return math.isfinite(c)
    except OverflowError:       # an int beyond float range (JSON allows any number of digits)
        return False


def _show_coords(coords) -> str:
    return "[" + ", ".join(repr(c) if _finite(c) or isinstance(c, float) else "<huge int>" for c in coords) + "]"


def _json_style(value) -> str:
    # a lone dict is re-rendered as a lone dict, so a dict nested in other JSON keeps its place
    return "json" if isinstance(value, list) else "json_object"


def _json_spans(text: str, dims, fmt: str = "qwen2.5-vl") -> list[GroundingSpan]:
    spans: list[GroundingSpan] = []
    fences = []
    for m in _FENCE_RE.finditer(text):
        if any(a <= m.start() < b for a, b in fences):
            continue
        close = text.find("```", m.end())
        body_end = close if close >= 0 else len(text)
        fence_end = close + 3 if close >= 0 else len(text)
        fences.append((m.start(), fence_end))
        body = text[m.end():body_end]
        lead = len(body) - len(body.lstrip())
        i = m.end() + lead
        if i >= body_end or text[i] not in "[{":
            continue
        dec = _decode_json_at(text, i, body_end)
        if dec is None:
            continue
        value, end, truncated = dec
        parsed = _as_objects(value, dims, fmt)
        if parsed is None:
            continue
        if text[end:body_end].strip() and not truncated:
            continue  # the fence holds more than this JSON; leave it alone
        # a truncated body's broken tail is dropped; the closing fence (if any) is kept
        closing = text[body_end if truncated else end:fence_end]
        spans.append(GroundingSpan(m.start(), fence_end, parsed[0], parsed[1], _json_style(value),
                                   fence=(text[m.start():i], closing), truncated=truncated))
    taken = list(fences)
    for m in _POINTS_RE.finditer(text):
        if any(a <= m.start() < b for a, b in taken):
            continue
        attrs = dict(_ATTR_RE.findall(m.group("attrs")))
        raws = []
        k = 1
        while f"x{k}" in attrs and f"y{k}" in attrs:
            raws.append((attrs[f"x{k}"], attrs[f"y{k}"]))
            k += 1
        if not raws and "x" in attrs and "y" in attrs:
            raws.append((attrs["x"], attrs["y"]))
        try:
            raws = [tuple(float(v) for v in r) for r in raws]
        except ValueError:
            continue
        if not raws:
            continue
        phrase = m.group("phrase").strip()
        label = phrase or attrs.get("alt") or None
        objects = [_make("point", _decode_raw(r, fmt, dims), label) for r in raws]
        spans.append(GroundingSpan(m.start(), m.end(), objects, [_intify(r) for r in raws], "points_xml"))
        taken.append((m.start(), m.end()))
    # bare JSON outside fences and XML (skipped outright when no key could be present)
    i = 0
    n = len(text) if ("bbox_2d" in text or "point_2d" in text) else 0
    while i < n:
        j = min((k for k in (text.find("[", i), text.find("{", i)) if k >= 0), default=-1)
        if j < 0:
            break
        inside = next((b for a, b in taken if a <= j < b), None)
        if inside is not None:
            i = inside
            continue
        nxt = min((a for a, _ in taken if a > j), default=n)
        dec = _decode_json_at(text, j, nxt)
        parsed = _as_objects(dec[0], dims, fmt) if dec is not None else None
        if parsed is None:
            i = j + 1
            continue
        value, end, truncated = dec
        spans.append(GroundingSpan(j, end, parsed[0], parsed[1], _json_style(value), truncated=truncated))
        taken.append((j, end))
        i = end
    return sorted(spans, key=lambda s: s.start)


def _parse(text: str, fmt: str, dims) -> tuple[list[GroundingSpan], list[GroundingProblem]]:
    if fmt == "pixel":
        raise GroundingError("the 'pixel' format has no text form; pass structured boxes through objects_from_pixels")
    if fmt in JSON_FORMATS:
        spans = _json_spans(text, dims, fmt)
        problems = [GroundingProblem("truncated", "truncated JSON: only its complete elements were kept", k)
                    for k, s in enumerate(spans) if s.truncated]
        return spans, problems
    return _token_spans(text, fmt, dims)


def parse_grounding(text: str, fmt: str | Preset, *, original_size, resized_size=None) -> list[GroundingSpan]:
    """Every grounding span of `fmt` in `text`, in order, objects decoded to original-image pixels.

    original_size / resized_size are (height, width); resized_size matters for qwen2.5-vl only and
    defaults to smart_resize with the released band (3136 ... 12 845 056 pixels).
    """
    name = _fmt_name(fmt)
    dims = _sizes(original_size, resized_size, fmt if isinstance(fmt, Preset) else None)
    return _parse(text, name, dims)[0]


# ------------------------------------------------------------------ structured pixel input


def objects_from_pixels(records: Iterable[Mapping]) -> list[GroundingObject]:
    """Structured boxes/points in original-image pixels: {"bbox": [x1, y1, x2, y2], "label": ...} or
    {"point": [x, y], "label": ...} (label optional)."""
    out: list[GroundingObject] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise GroundingError(f"grounding record {i} must be a mapping, got {type(rec).__name__}")
        label = rec.get("label")
        label = None if label is None else str(label)
        for key, n, shape in (("bbox", 4, "box"), ("point", 2, "point")):
            if key in rec:
                c = rec[key]
                if not isinstance(c, (list, tuple)) or len(c) != n or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in c
                ):
                    raise GroundingError(f"grounding record {i}: {key!r} must be {n} numbers, got {c!r}")
                out.append(_make(shape, tuple(c), label))
                break
        else:
            raise GroundingError(f"grounding record {i} has neither 'bbox' nor 'point': {dict(rec)!r}")
    return out


# ------------------------------------------------------------------ rendering


def _label_of(obj, label_style: str) -> str | None:
    return None if label_style == "none" else obj.label


def _supported(obj: GroundingObject, fmt: str) -> bool:
    if fmt == "qwen2-vl":
        return not isinstance(obj, Point)
    if fmt == "qwen-vl":
        return isinstance(obj, Box)
    return not isinstance(obj, Quad)


def _render_encoded(objects, encoded, fmt: str, label_style: str) -> str:
    if fmt in JSON_FORMATS:
        items = []
        for obj, enc in zip(objects, encoded):
            d = {("bbox_2d" if isinstance(obj, Box) else "point_2d"): list(enc)}
            label = _label_of(obj, label_style)
            if label is not None:
                d["label"] = label
            items.append(d)
        return json.dumps(items, ensure_ascii=False)
    ref_open, ref_close = ("<|object_ref_start|>", "<|object_ref_end|>") if fmt == "qwen2-vl" else ("<ref>", "</ref>")
    out, prev = [], object()
    for obj, enc in zip(objects, encoded):
        label = _label_of(obj, label_style)
        if label is not None and label != prev:
            out.append(f"{ref_open}{label}{ref_close}")
        prev = label  # consecutive objects with one label share one ref (several boxes per ref)
        pairs = ",".join(f"({enc[k]},{enc[k + 1]})" for k in range(0, len(enc), 2))
        if isinstance(obj, Quad):
            out.append(f"<|quad_start|>{pairs}<|quad_end|>")
        elif fmt == "qwen2-vl":
            out.append(f"<|box_start|>{pairs}<|box_end|>")
        else:
            out.append(f"<box>{pairs}</box>")
    return "".join(out)


def _render_points_xml(objects, encoded, label_style: str) -> str:
    attrs = " ".join(f'x{k + 1}="{e[0]}" y{k + 1}="{e[1]}"' for k, e in enumerate(encoded))
    label = _label_of(objects[0], label_style) or ""
    return f'<points {attrs} alt="{label}">{label}</points>'


def render_objects(
    objects: Iterable[GroundingObject], fmt: str | Preset, *, original_size, resized_size=None, label_style: str = "auto"
) -> str:
    """Objects in original-image pixels written in `fmt`'s text form.

    qwen2.5-vl: a JSON list [{"bbox_2d": [...], "label": "..."}, {"point_2d": [...], ...}];
    qwen2-vl / qwen-vl: a ref phrase before each run of same-label boxes, then the boxes.
    label_style: "auto" writes labels that are set; "none" writes coordinates only.
    Raises GroundingError for a shape the format cannot express (points in qwen2-vl / qwen-vl,
    quads in qwen2.5-vl / qwen-vl).
    """
    objects = list(objects)
    name = _fmt_name(fmt)
    if name == "pixel":
        raise GroundingError("the 'pixel' format has no text form")
    if label_style not in LABEL_STYLES:
        raise GroundingError(f"label_style must be one of {LABEL_STYLES}, got {label_style!r}")
    for obj in objects:
        if not _supported(obj, name):
            raise GroundingError(f"a {_shape(obj)} has no {name} text form")
    dims = _sizes(original_size, resized_size, fmt if isinstance(fmt, Preset) else None)
    encoded = [encode_object(o, name, original_size=dims[:2], resized_size=dims[2:]) for o in objects]
    return _render_encoded(objects, encoded, name, label_style)


# ------------------------------------------------------------------ conversion


def _convert_objects(objects, raws, span_idx, identity, dst, dims, report) -> list[tuple] | None:
    """Encoded target coordinates per object (None if any object cannot be expressed in `dst`)."""
    original = dims[:2]
    encoded, ok = [], True
    for k, obj in enumerate(objects):
        for kind, msg in check_object(obj, original):
            report.problems.append(GroundingProblem(kind, msg, span_idx, k))
        after = None
        if not _supported(obj, dst):
            ok = False
            report.problems.append(GroundingProblem(
                "unsupported", f"a {_shape(obj)} has no {dst} text form; the span was left unchanged", span_idx, k))
        elif identity:
            after = raws[k]  # same format: the coordinates are kept as written, no requantisation
        else:
            after = encode_object(obj, dst, original_size=original, resized_size=dims[2:])
            if isinstance(obj, Box) and obj.x2 > obj.x1 and obj.y2 > obj.y1 and (after[2] <= after[0] or after[3] <= after[1]):
                report.problems.append(GroundingProblem(
                    "collapsed", f"box {_fmt_num(_coords(obj))} has zero area after encoding as {dst}: {list(after)}",
                    span_idx, k))
        encoded.append(after)
        report.changes.append(ObjectChange(span_idx, k, _shape(obj), obj.label, tuple(raws[k]), _coords(obj), after))
    return encoded if ok else None


def convert_grounding_text(
    text: str,
    src_fmt: str | Preset,
    dst_preset: str | Preset,
    *,
    original_size,
    resized_size=None,
    strict: bool = False,
    label_style: str = "auto",
    src_resized_size=None,
) -> tuple[str, GroundingReport]:
    """Rewrite every `src_fmt` grounding span of `text` into `dst_preset`'s format; other text is untouched.

    original_size / resized_size: (height, width) of the original image and of the model-input image
    (the resized size is used by qwen2.5-vl on either side; default: smart_resize with the target
    preset's band, or the released band). `src_resized_size`: the resized size the source qwen2.5-vl
    coordinates were written for, when it differs (e.g. a dataset made with the 1 003 520-pixel band
    re-targeted to the released band, §12.3); default: the same as `resized_size`.
    Same format and same sizes: spans are left exactly as written and only checked. Qwen2.5-VL output is the canonical JSON list, inside the original
    ```json fence if there was one; XML <points> stay XML.
    strict=True raises GroundingError listing the problems instead of returning them.
    """
    src = _fmt_name(src_fmt)
    dst_p = dst_preset if isinstance(dst_preset, Preset) else None
    dst = _fmt_name(dst_preset if dst_p is None else dst_p.grounding)
    if dst == "pixel":
        raise GroundingError("the 'pixel' format has no text form to convert into")
    if dst_p is None and dst == "qwen2.5-vl":
        dst_p = get_preset("qwen2.5-vl")
    dims = _sizes(original_size, resized_size, dst_p)
    src_dims = dims if src_resized_size is None else _sizes(original_size, src_resized_size)
    identity = src == dst and (src != "qwen2.5-vl" or src_dims == dims)
    spans, problems = _parse(text, src, src_dims)
    report = GroundingReport(src, dst, problems=list(problems))
    pieces, cursor = [], 0
    for idx, span in enumerate(spans):
        encoded = _convert_objects(span.objects, span.raw, idx, identity, dst, dims, report)
        pieces.append(text[cursor:span.start])
        if encoded is None or identity:
            pieces.append(text[span.start:span.end])
        elif dst in JSON_FORMATS:
            body = _render_encoded(span.objects, encoded, dst, label_style)
            if span.style == "json_object":
                body = body[1:-1]  # the one element of the canonical list
            elif span.style == "points_xml":
                body = _render_points_xml(span.objects, encoded, label_style)
            pieces.append(body if span.fence is None else span.fence[0] + body + span.fence[1])
        else:
            pieces.append(_render_encoded(span.objects, encoded, dst, label_style))
        cursor = span.end
    pieces.append(text[cursor:])
    if strict and report.problems:
        raise GroundingError(
            f"{len(report.problems)} grounding problem(s) converting {src} -> {dst}: "
            + "; ".join(f"{p.kind}: {p.message}" for p in report.problems)
        )
    return "".join(pieces), report


def convert_objects(
    objects: Iterable[GroundingObject],
    dst_preset: str | Preset,
    *,
    original_size,
    resized_size=None,
    strict: bool = False,
    label_style: str = "auto",
) -> tuple[str, GroundingReport]:
    """Structured original-pixel objects (e.g. from `objects_from_pixels`) rendered in the target format,
    with the same report as `convert_grounding_text`."""
    objects = list(objects)
    dst_p = dst_preset if isinstance(dst_preset, Preset) else None
    dst = _fmt_name(dst_preset if dst_p is None else dst_p.grounding)
    dims = _sizes(original_size, resized_size, dst_p)
    report = GroundingReport("pixel", dst)
    encoded = _convert_objects(objects, [_coords(o) for o in objects], 0, False, dst, dims, report)
    if strict and report.problems:
        raise GroundingError(
            f"{len(report.problems)} grounding problem(s): " + "; ".join(f"{p.kind}: {p.message}" for p in report.problems)
        )
    if encoded is None:
        bad = [p.message for p in report.problems if p.kind == "unsupported"]
        raise GroundingError("; ".join(bad))
    return _render_encoded(objects, encoded, dst, label_style), report
