"""ChatML rendering of a Sample into input_ids + labels (spec §8, §9; DECISIONS.md "labels").

The ids equal what a Qwen2 tokenizer gives for the Qwen2-VL chat template's text after the
processor's pad expansion, but they are built segment by segment: text between special tokens is
encoded (added tokens always split the text, so per-segment encoding equals whole-text encoding)
and the thousands of `<|image_pad|>` ids are emitted directly instead of being tokenised as text.

Labels (the Qwen team's finetune convention): an assistant turn's content, its `<|im_end|>` and the
`\\n` after it are supervised; the `<|im_start|>assistant\\n` header, system/user turns and every
vision token (`<|vision_start|>`, pads, `<|vision_end|>`, and v1's `<img>…</img>`) are -100 — the
model never predicts image features. When assistant content begins with whitespace that BPE fuses
with the header's `\\n` (e.g. content "\\nHi" gives one "\\n\\n" token), that token is supervised:
it carries content characters.

Length: vlprep never cuts a vision block and never truncates silently. A sequence longer than
`max_length` raises SequenceTooLongError(length, limit); dropping trailing turns is not offered
because it would also drop media whose pixels the caller has already computed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import FormatError, PlaceholderMismatchError, SequenceTooLongError
from .presets import IGNORE_INDEX, get_preset
from .sample import ImagePart, Sample, TextPart, VideoPart

_PRESET_DEFAULT = object()  # sentinel: "use preset.system_prompt"
ROLES = ("system", "user", "assistant")


@dataclass
class ChatMLResult:
    """`text`: the chat template's rendering, one pad token per media item (before expansion).
    `input_ids` / `labels`: int32 [L], pads expanded."""

    text: str
    input_ids: np.ndarray
    labels: np.ndarray
    n_image_tokens: int = 0
    n_video_tokens: int = 0
    n_supervised: int = field(default=0)


class _Builder:
    """Collects the sequence as alternating text runs and literal id blocks, each with a label flag.

    Text is buffered until the next literal id block, then encoded once, so the BPE sees exactly the
    stretch of text the reference tokenizer sees between two special tokens.
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.chunks: list[np.ndarray] = []
        self.label_chunks: list[np.ndarray] = []
        self.run: list[tuple[str, bool]] = []
        self.text: list[str] = []

    def add_text(self, s: str, supervised: bool) -> None:
        if s:
            self.run.append((s, supervised))
            self.text.append(s)

    def add_ids(self, ids: np.ndarray, supervised: bool, shown: str) -> None:
        self._flush()
        self.chunks.append(ids)
        self.label_chunks.append(ids if supervised else np.full(len(ids), IGNORE_INDEX, np.int32))
        self.text.append(shown)

    def _flush(self) -> None:
        if not self.run:
            return
        run, self.run = self.run, []
        ids = np.asarray(self.tok.encode("".join(s for s, _ in run)), dtype=np.int32)
        labels = ids.copy() if run[0][1] else np.full(len(ids), IGNORE_INDEX, np.int32)
        if any(sup != run[0][1] for _, sup in run):
            labels = self._mixed_labels(run, ids)
        self.chunks.append(ids)
        self.label_chunks.append(labels)

    def _mixed_labels(self, run, ids) -> np.ndarray:
        # Only shape produced below: an unsupervised header ending in "\n", then supervised content.
        # "\n" composes with nothing under NFC, so the header's byte length survives normalisation.
        head = [s for s, sup in run[: next(i for i, (_, sup) in enumerate(run) if sup)]]
        assert all(not sup for _, sup in run[: len(head)]) and all(sup for _, sup in run[len(head):]), run
        assert head and head[-1].endswith("\n"), head
        boundary = len("".join(head).encode("utf-8"))
        labels = ids.copy()
        end = 0
        for k, i in enumerate(ids):
            end += len(self.tok.token_bytes(int(i)))
            if end > boundary:
                break  # this token holds content bytes (it may straddle the boundary): supervised
            labels[k] = IGNORE_INDEX
        return labels

    def finish(self) -> tuple[str, np.ndarray, np.ndarray]:
        self._flush()
        if not self.chunks:
            return "", np.zeros(0, np.int32), np.zeros(0, np.int32)
        return "".join(self.text), np.concatenate(self.chunks), np.concatenate(self.label_chunks)


def build_chatml(
    sample: Sample,
    preset=None,
    tokenizer=None,
    *,
    image_tokens: list[int] | tuple[int, ...] = (),
    video_tokens: list[int] | tuple[int, ...] = (),
    system_prompt=_PRESET_DEFAULT,
    max_length: int | None = None,
    add_vision_id: bool = False,
    add_generation_prompt: bool = False,
    video_times: "list[list[float]] | None" = None,
) -> ChatMLResult:
    """Render `sample` as ChatML ids and labels.

    image_tokens[i] / video_tokens[i]: pad count of the i-th image / video (prod(grid_thw) / 4), in
    placeholder order. system_prompt: default = preset.system_prompt, inserted when the first
    message is not a system message; None inserts nothing. qwen-vl: images render as
    `Picture k: <img>` + 256 `<imgpad>` + `</img>\\n` (k counts from 1 over the conversation).
    video_times[i]: for presets with `video_timestamps` (Qwen3-VL), the seconds of video i's temporal
    groups; the video renders as `<{t:.1f} seconds>` + a vision block of video_tokens[i] / groups pads
    per group (inside one more vision_start / vision_end pair for the "5.x" layout).
    Raises PlaceholderMismatchError, FormatError, SequenceTooLongError.
    """
    preset = get_preset(preset)
    if tokenizer is None:
        from .tokenizer import get_tokenizer

        tokenizer = get_tokenizer(preset=preset)
    if system_prompt is _PRESET_DEFAULT:
        system_prompt = preset.system_prompt
    where = f"sample {sample.id!r}"
    if not sample.messages:
        raise FormatError(f"{where}: no messages")
    _check_media(sample, image_tokens, video_tokens, preset, where)

    tid = tokenizer.token_to_id
    im_start = np.array([tid("<|im_start|>")], np.int32)
    im_end = np.array([tid("<|im_end|>")], np.int32)
    v1 = preset.fixed_size is not None
    if preset.video_timestamps is not None and sample.videos and (
            video_times is None or len(video_times) != len(sample.videos)):
        raise PlaceholderMismatchError(f"{where}: preset {preset.name} writes timestamps before each temporal group; "
                                       f"give video_times for each of the {len(sample.videos)} video(s)")
    if v1:
        img_open, img_pad, img_close = (tid(t) for t in ("<img>", "<imgpad>", "</img>"))
    else:
        v_start, v_end = tid("<|vision_start|>"), tid("<|vision_end|>")
        image_pad, video_pad = tid("<|image_pad|>"), tid("<|video_pad|>")

    b = _Builder(tokenizer)
    n_img = n_vid = 0

    def block(open_id: int, pad_id: int, n: int, close_id: int) -> np.ndarray:
        return np.concatenate([[open_id], np.full(n, pad_id), [close_id]]).astype(np.int32)

    def turn(role: str, parts, supervised: bool) -> None:
        nonlocal n_img, n_vid
        b.add_ids(im_start, False, "<|im_start|>")
        b.add_text(f"{role}\n", False)
        for p in parts:
            if isinstance(p, TextPart):
                b.add_text(p.text, supervised)
            elif isinstance(p, ImagePart):
                n = int(image_tokens[p.index])
                n_img += 1
                if v1:
                    b.add_text(f"Picture {n_img}: ", supervised)
                    b.add_ids(block(img_open, img_pad, n, img_close), False, "<img><imgpad></img>")
                    b.add_text("\n", supervised)
                else:
                    if add_vision_id:
                        b.add_text(f"Picture {n_img}: ", supervised)
                    b.add_ids(block(v_start, image_pad, n, v_end), False, "<|vision_start|><|image_pad|><|vision_end|>")
            elif isinstance(p, VideoPart):
                n = int(video_tokens[p.index])
                n_vid += 1
                if add_vision_id:
                    b.add_text(f"Video {n_vid}: ", supervised)
                if preset.video_timestamps is None:
                    b.add_ids(block(v_start, video_pad, n, v_end), False, "<|vision_start|><|video_pad|><|vision_end|>")
                    continue
                times = video_times[p.index]
                if not times or n % len(times):
                    raise PlaceholderMismatchError(f"{where}: video {p.index} has {n} tokens, not a multiple of its "
                                                   f"{len(times)} temporal group(s)")
                per = n // len(times)
                outer = preset.video_timestamps == "5.x"
                if outer:
                    b.add_ids(np.array([v_start], np.int32), False, "<|vision_start|>")
                for t in times:
                    # the timestamp joins the surrounding text run: the BPE sees it as the processor's text
                    b.add_text(f"<{t:.1f} seconds>", supervised)
                    b.add_ids(block(v_start, video_pad, per, v_end), False, "<|vision_start|><|video_pad|><|vision_end|>")
                if outer:
                    b.add_ids(np.array([v_end], np.int32), False, "<|vision_end|>")
            else:
                raise FormatError(f"{where}: unknown message part {p!r}")
        b.add_ids(im_end, supervised, "<|im_end|>")
        b.add_text("\n", supervised)

    if sample.messages[0].role != "system" and system_prompt is not None:
        turn("system", [TextPart(system_prompt)], False)
    for m in sample.messages:
        if m.role not in ROLES:
            raise FormatError(f"{where}: role {m.role!r} is not one of {ROLES}")
        turn(m.role, m.parts, m.role == "assistant")
    if add_generation_prompt:
        b.add_ids(im_start, False, "<|im_start|>")
        b.add_text("assistant\n", False)

    text, input_ids, labels = b.finish()
    n_image_tokens = int(sum(image_tokens))
    n_video_tokens = int(sum(video_tokens))
    _check_counts(input_ids, tokenizer, v1, n_image_tokens, n_video_tokens, len(image_tokens), where)
    if max_length is not None and len(input_ids) > max_length:
        err = SequenceTooLongError(
            f"{where}: {len(input_ids)} tokens > max_length {max_length} "
            f"({n_image_tokens} image + {n_video_tokens} video tokens); vlprep never cuts a vision "
            f"block or truncates silently: raise max_length, lower max_pixels, or drop the sample"
        )
        err.length, err.limit = len(input_ids), max_length
        raise err
    return ChatMLResult(
        text=text,
        input_ids=input_ids,
        labels=labels,
        n_image_tokens=n_image_tokens,
        n_video_tokens=n_video_tokens,
        n_supervised=int((labels != IGNORE_INDEX).sum()),
    )


def _check_media(sample: Sample, image_tokens, video_tokens, preset, where: str) -> None:
    """Parts must name media i = 0, 1, 2 … in placeholder order (pixel_values are stored in that
    order), each exactly once, with one positive token count per media item."""
    for kind, cls, tokens, media in (
        ("image", ImagePart, image_tokens, sample.images),
        ("video", VideoPart, video_tokens, sample.videos),
    ):
        seen = [p.index for m in sample.messages for p in m.parts if isinstance(p, cls)]
        if seen and kind == "video" and not preset.supports_video:
            raise FormatError(f"{where}: preset {preset.name} has no video support ({len(seen)} video part(s))")
        if seen != list(range(len(seen))):
            bad = [i for i in seen if not 0 <= i < len(media)]
            detail = f"refer to missing {kind} index(es) {bad}" if bad else f"are not in order 0..n-1: {seen}"
            raise PlaceholderMismatchError(f"{where}: {kind} parts {detail} ({len(media)} {kind}s in the sample)")
        if len(seen) != len(media) or len(tokens) != len(media):
            raise PlaceholderMismatchError(
                f"{where}: {len(seen)} {kind} placeholder(s), {len(media)} {kind}(s) in the sample, "
                f"{len(tokens)} {kind} token count(s) given; all three must be equal"
            )
        for i, n in enumerate(tokens):
            if int(n) != n or n <= 0:
                raise PlaceholderMismatchError(f"{where}: {kind} {i} has token count {n!r}; must be a positive int")
            if kind == "image" and preset.image_tokens_fixed and n != preset.image_tokens_fixed:
                raise PlaceholderMismatchError(
                    f"{where}: {preset.name} images take exactly {preset.image_tokens_fixed} tokens, image {i} got {n}"
                )


def _check_counts(ids: np.ndarray, tok, v1: bool, n_image: int, n_video: int, n_images: int, where: str) -> None:
    """Spec §14 item 9: pad counts must equal the features exactly. Text that spells a pad token
    (or `<|vision_start|>`) out literally would shift every vision block after it."""
    if v1:
        checks = [("<imgpad>", n_image), ("<img>", n_images)]
    else:
        checks = [("<|image_pad|>", n_image), ("<|video_pad|>", n_video)]
    for token, expected in checks:
        got = int((ids == tok.token_to_id(token)).sum())
        if got != expected:
            raise PlaceholderMismatchError(
                f"{where}: {got} {token} tokens in the sequence, {expected} expected; the text "
                f"contains {token} written out literally — remove it from the record"
            )
    if not v1:
        starts = int((ids == tok.token_to_id("<|vision_start|>")).sum())
        ends = int((ids == tok.token_to_id("<|vision_end|>")).sum())
        if starts != ends:
            raise PlaceholderMismatchError(
                f"{where}: {starts} <|vision_start|> vs {ends} <|vision_end|> tokens; the text spells "
                f"one of them out literally — remove it from the record"
            )
