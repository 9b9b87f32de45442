"""A small, self-made demo corpus so a fresh clone can run the whole job without ../shared.

Scenes are drawn with Pillow (coloured shapes on textured backgrounds, with their true boxes),
clips are encoded with PyAV (a ball moving across the frame), and the conversations come in four
input formats. A handful of deliberately bad records show how the ledger accounts for them.
"""
from __future__ import annotations

import fractions
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from processors.errors import UserInputError

COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")


@dataclass
class DrawnObject:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels of the original image

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def _background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 200, size=3)
    tilt = rng.uniform(-0.15, 0.15, size=(3, 2))
    img = np.stack([base[c] + tilt[c, 0] * x + tilt[c, 1] * y for c in range(3)], axis=-1)
    img += rng.normal(0, 6, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def draw_scene(width: int, height: int, n_objects: int, seed: int) -> tuple[Image.Image, list[DrawnObject]]:
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    img = _background(width, height, rng)
    draw = ImageDraw.Draw(img)
    objects: list[DrawnObject] = []
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    pick.shuffle(combos)
    for colour, shape in combos[:n_objects]:
        size = pick.randint(min(width, height) // 8, min(width, height) // 3)
        x1 = pick.randint(0, width - size - 1)
        y1 = pick.randint(0, height - size - 1)
        box = (x1, y1, x1 + size, y1 + size)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x1 + size // 2, y1), (x1, y1 + size), (x1 + size, y1 + size)], fill=fill)
        objects.append(DrawnObject(colour, shape, box))
    return img, objects


def _qwen2_box(obj: DrawnObject, width: int, height: int) -> str:
    """The object as Qwen2-VL grounding text: 0-1000 on the original image, half-even rounding."""
    x1, y1, x2, y2 = obj.box
    def n(v, size):
        return min(max(round(v / size * 1000), 0), 1000)
    return (f"<|object_ref_start|>the {obj.name}<|object_ref_end|>"
            f"<|box_start|>({n(x1, width)},{n(y1, height)}),({n(x2, width)},{n(y2, height)})<|box_end|>")


def write_clip(path: Path, *, width: int, height: int, seconds: float, fps: int, codec: str, colour: str) -> None:
    import av

    rng = np.random.default_rng(len(path.name))
    bg = np.asarray(_background(width, height, rng))
    n = int(seconds * fps)
    r = min(width, height) // 6
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fractions.Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n):
            cx = int(r + (width - 2 * r) * i / max(n - 1, 1))
            cy = height // 2 + int(height / 5 * np.sin(i / fps * 3))
            frame = bg.copy()
            frame[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = COLOURS[colour]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


MIN_SCENES = 5


def build_demo_corpus(out: str | Path, *, n_scenes: int = 12, seed: int = 0) -> dict[str, Path]:
    """Write images, clips and conversation files under `out`; returns the written data files."""
    if n_scenes < MIN_SCENES:
        raise UserInputError(f"--scenes {n_scenes}: give at least {MIN_SCENES} (the bad and multi-image records "
                             f"reuse scenes 0-4)")
    out = Path(out)
    media = out / "media"
    media.mkdir(parents=True, exist_ok=True)
    sizes = [(640, 480), (800, 600), (1024, 576), (480, 640), (1280, 720), (320, 240)]
    scenes = []
    for i in range(n_scenes):
        w, h = sizes[i % len(sizes)]
        img, objects = draw_scene(w, h, 2 + i % 3, seed + i)
        name = f"scene_{i:02d}.jpg" if i % 4 else f"scene_{i:02d}.png"
        img.save(media / name, quality=92) if name.endswith(".jpg") else img.save(media / name)
        scenes.append((name, w, h, objects))

    write_clip(media / "ball_left_right.mp4", width=320, height=240, seconds=4, fps=24, codec="libx264", colour="yellow")
    write_clip(media / "ball_red.webm", width=256, height=192, seconds=2.5, fps=25, codec="libvpx-vp9", colour="red")

    # Deliberately bad media: a truncated JPEG and a file that is not a video.
    good = (media / scenes[1][0]).read_bytes()
    (media / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (media / "not_a_video.mp4").write_bytes(b"this is plain text, not an mp4 container\n" * 20)

    files: dict[str, Path] = {}

    # 1) LLaMA-Factory "messages" format: captions and Qwen2-VL grounding answers.
    lf = []
    for name, w, h, objects in scenes:
        names = " and ".join(f"a {o.name}" for o in objects)
        lf.append({"messages": [
            {"role": "user", "content": "<image>What shapes are in this picture?"},
            {"role": "assistant", "content": f"There are {len(objects)} shapes: {names}."},
            {"role": "user", "content": f"Where is the {objects[0].name}?"},
            {"role": "assistant", "content": _qwen2_box(objects[0], w, h)},
        ], "images": [name]})
    lf.append({"messages": [  # placeholder mismatch: two <image> tags, one image
        {"role": "user", "content": "<image><image>Compare these."},
        {"role": "assistant", "content": "They look alike."}], "images": [scenes[0][0]]})
    lf.append({"messages": [  # missing file
        {"role": "user", "content": "<image>Describe it."},
        {"role": "assistant", "content": "A picture."}], "images": ["does_not_exist.jpg"]})
    lf.append({"messages": [  # path escape
        {"role": "user", "content": "<image>Describe it."},
        {"role": "assistant", "content": "A secret."}], "images": ["../../../etc/passwd"]})
    lf.append({"messages": [  # corrupt image
        {"role": "user", "content": "<image>Describe it."},
        {"role": "assistant", "content": "Half a picture."}], "images": ["truncated.jpg"]})
    lf.append({"messages": [  # degenerate repetition
        {"role": "user", "content": "<image>Describe it."},
        {"role": "assistant", "content": "The shapes are very colourful. " * 12}], "images": [scenes[2][0]]})
    lf.append(dict(lf[0]))  # exact duplicate of the first record
    files["llamafactory"] = out / "scenes_llamafactory.json"
    files["llamafactory"].write_text(json.dumps(lf, indent=1))

    # 2) LLaVA format (jsonl), one broken line included; its own scenes, so near-dup finds nothing.
    lines = []
    for i in range(6):
        w, h = sizes[(i + 2) % len(sizes)]
        img, objects = draw_scene(w, h, 1 + i % 4, seed + 100 + i)
        name = f"llava_{i:02d}.jpg"
        img.save(media / name, quality=90)
        lines.append(json.dumps({"id": f"llava-{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nHow many shapes do you see?"},
            {"from": "gpt", "value": f"I see {len(objects)} shapes."}]}))
    lines.insert(3, '{"id": "llava-broken", "image": "llava_00.jpg", "conversations": [')
    files["llava"] = out / "scenes_llava.jsonl"
    files["llava"].write_text("\n".join(lines) + "\n")

    # 3) OpenAI-style content parts with videos (jsonl).
    openai = [
        {"id": "video-ball", "messages": [
            {"role": "user", "content": [{"type": "video", "video": "ball_left_right.mp4", "fps": 2.0},
                                         {"type": "text", "text": "Which way does the ball move?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "The yellow ball moves from left to right while bobbing up and down."}]}]},
        {"id": "video-red", "messages": [
            {"role": "user", "content": [{"type": "video", "video": "ball_red.webm"},
                                         {"type": "text", "text": "What colour is the ball?"}]},
            {"role": "assistant", "content": "It is red."}]},
        {"id": "video-broken", "messages": [
            {"role": "user", "content": [{"type": "video", "video": "not_a_video.mp4"},
                                         {"type": "text", "text": "What happens?"}]},
            {"role": "assistant", "content": "Nothing."}]},
        {"id": "two-images", "messages": [
            {"role": "user", "content": [{"type": "image", "image": scenes[3][0]}, {"type": "image", "image": scenes[4][0]},
                                         {"type": "text", "text": "Which picture has more shapes?"}]},
            {"role": "assistant", "content": "The second one." if len(scenes[4][3]) > len(scenes[3][3]) else "The first one, or they are equal."}]},
    ]
    files["openai"] = out / "media_openai.jsonl"
    files["openai"].write_text("".join(json.dumps(r) + "\n" for r in openai))
    return files
