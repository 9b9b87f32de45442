"""Assistant answers to calibrate the repetition rules on (issue #10; docs/filters.md).

`clean()`: ordinary instruction-tuning answers whose structure repeats itself by nature: multi-image
comparisons ("First: The image shows ... Second: The image shows ..."), enumerations, markdown
tables, code, OCR transcriptions of receipts and forms, Qwen2.5-VL grounding JSON, Chinese
descriptions, step-by-step math. `degenerate()`: what the rules exist for: generations stuck in a
loop (a sentence, a phrase, a list item, an OCR line, Chinese), keyboard mashing, runs of one token.
Both are generated from a fixed seed, so the calibration in docs/filters.md is reproducible.
"""
from __future__ import annotations

import random

COLORS = ["red", "blue", "green", "white", "black", "yellow", "grey", "brown", "orange", "purple"]
OBJECTS = ["car", "bus", "dog", "cat", "bicycle", "bench", "umbrella", "laptop", "cup", "chair", "tree", "boat",
           "horse", "train", "kite", "clock", "vase", "book", "backpack", "bird"]
PLACES = ["on a busy street", "in a park", "next to a building", "on a wooden table", "in a living room",
          "near the beach", "in front of a house", "on a snowy road", "beside a river", "in a kitchen"]
DETAILS = ["The lighting is soft and warm.", "Several people are walking in the background.",
           "The sky is overcast.", "There is a shadow on the left side.", "The photo was taken at dusk.",
           "A sign with white letters is partly visible.", "The background is slightly blurred.",
           "Leaves are scattered on the ground.", "The scene looks calm and quiet.", "It appears to be raining."]
ZH_OBJ = ["一只猫", "一辆红色的汽车", "一张木桌", "几个孩子", "一棵大树", "一本书", "一个杯子", "一只小狗"]
ZH_PLACE = ["在公园里", "在街道上", "在房间里", "在桌子上", "在河边", "在操场上"]
ZH_DETAIL = ["阳光很明亮。", "背景有一些模糊。", "画面显得很安静。", "远处有几栋高楼。", "天空是蓝色的。", "地上有一些落叶。"]
ITEMS = [("Coffee", 3.5), ("Bagel", 2.25), ("Orange juice", 4.0), ("Croissant", 2.75), ("Tea", 2.5),
         ("Muffin", 3.0), ("Water", 1.5), ("Sandwich", 6.75)]


def _obj(r):
    return f"{r.choice(COLORS)} {r.choice(OBJECTS)}"


def comparison(r):
    n = r.choice([2, 2, 2, 3])
    labels = r.choice([["First", "Second", "Third"], ["Image 1", "Image 2", "Image 3"],
                       ["The first image", "The second image", "The third image"]])
    parts = [f"{labels[i]}: The image shows a {_obj(r)} {r.choice(PLACES)}. {r.choice(DETAILS)}" for i in range(n)]
    tail = r.choice(["", f" Both images show a {r.choice(OBJECTS)}, but the settings differ.",
                     " The main difference is the colour of the objects and the place."])
    return " ".join(parts) + tail


def enumeration(r):
    k = r.randint(3, 8)
    head = r.choice(["Here are the objects in the image:", "The image contains the following items:",
                     "I can see these things:"])
    lines = [f"{i + 1}. A {_obj(r)} {r.choice(PLACES)}." for i in range(k)]
    return head + "\n" + "\n".join(lines)


def table(r):
    k = r.randint(3, 7)
    rows = [f"| {r.choice(OBJECTS)} | {r.choice(COLORS)} | {r.randint(1, 9)} |" for _ in range(k)]
    return "Here is a table of the objects:\n\n| Object | Color | Count |\n| --- | --- | --- |\n" + "\n".join(rows)


def code(r):
    names = r.sample(["loss", "accuracy", "precision", "recall", "f1", "latency"], r.randint(2, 4))
    body = "\n".join(f'plt.plot(epochs, history["{n}"], label="{n}")' for n in names)
    return ("You can plot the curves from the chart like this:\n\n```python\nimport matplotlib.pyplot as plt\n\n"
            f"epochs = range(1, {r.randint(5, 50)})\n{body}\nplt.xlabel(\"epoch\")\nplt.legend()\nplt.show()\n```")


def receipt(r):
    k = r.randint(3, 7)
    picked = [r.choice(ITEMS) for _ in range(k)]   # repeated purchases repeat whole lines, as on paper
    lines = [f"1 x {name:<14} {price:>6.2f}" for name, price in picked]
    total = sum(p for _, p in picked)
    return (f"The receipt reads:\nCAFE {r.choice(['ROMA', 'LUNA', 'SOL'])}\nTable {r.randint(1, 20)}\n"
            + "\n".join(lines) + f"\nSubtotal {total:>8.2f}\nTax {total * 0.08:>8.2f}\nTotal {total * 1.08:>8.2f}\n"
            "Thank you for your visit!")


def form(r):
    fields = r.sample(["Name", "Date", "Address", "Phone", "Email", "Signature", "City", "Zip code"], r.randint(4, 7))
    return "The form has these fields, all of them empty:\n" + "\n".join(f"{f}: ________" for f in fields)


def grounding(r):
    label = r.choice(["person", "car", "dog", "chair", "traffic light", "white car", "person with umbrella"])
    boxes = []
    for _ in range(r.randint(2, 8)):
        x, y = r.randint(0, 500), r.randint(0, 400)
        boxes.append(f'{{"bbox_2d": [{x}, {y}, {x + r.randint(20, 200)}, {y + r.randint(20, 200)}], "label": "{label}"}}')
    return "```json\n[\n  " + ",\n  ".join(boxes) + "\n]\n```"


def chinese(r):
    k = r.randint(2, 4)
    return "".join(f"图中{r.choice(ZH_PLACE)}有{r.choice(ZH_OBJ)}。{r.choice(ZH_DETAIL)}" for _ in range(k)) + \
        r.choice(["整体来看，这是一张日常生活的照片。", "这张图片的构图很简洁。"])


def math(r):
    a, b, c = r.randint(2, 9), r.randint(10, 99), r.randint(10, 99)
    return (f"Step 1: The chart shows {b} apples and {c} oranges.\nStep 2: Each box holds {a} fruits.\n"
            f"Step 3: Total fruits = {b} + {c} = {b + c}.\nStep 4: Boxes needed = {b + c} / {a} = "
            f"{(b + c) / a:.2f}, so {-(-(b + c) // a)} boxes.\nThe answer is {-(-(b + c) // a)}.")


def describe(r):
    return (f"The image shows a {_obj(r)} {r.choice(PLACES)}. {r.choice(DETAILS)} To the right there is a "
            f"{_obj(r)}, and a {_obj(r)} stands {r.choice(PLACES)}. {r.choice(DETAILS)}")


CLEAN = {"comparison": comparison, "enumeration": enumeration, "table": table, "code": code, "receipt": receipt,
         "form": form, "grounding": grounding, "chinese": chinese, "math": math, "describe": describe}


def _loop(unit: str, r, intro: str = "") -> str:
    """`unit` repeated until the loop is 150-600 characters long (a generation stuck until max tokens)."""
    n = max(3, -(-r.randint(150, 600) // len(unit)))
    return intro + unit * n


DEGENERATE = {
    "sentence_loop": lambda r: _loop(f"The image shows a {_obj(r)} {r.choice(PLACES)}. ", r),
    "loop_after_answer": lambda r: _loop(f"The {r.choice(OBJECTS)} is {r.choice(COLORS)}. ", r, describe(r) + " "),
    "phrase_loop": lambda r: _loop(f"and the {r.choice(OBJECTS)} ", r, "There is a cat "),
    "list_loop": lambda r: _loop(f"3. A {_obj(r)} {r.choice(PLACES)}.\n", r,
                                 f"The objects are:\n1. A {_obj(r)}.\n2. A {_obj(r)}.\n"),
    "ocr_loop": lambda r: _loop(f"TOTAL {r.randint(1, 99)}.00\n", r, "The text reads:\n"),
    "chinese_loop": lambda r: _loop(f"图中有{r.choice(ZH_OBJ)}。", r, "这张图片"),
    # mashing that cycles through a few key runs (random single letters are not repetition: out of scope)
    "keyboard_mash": lambda r: "".join(r.choice(["asdf", "jkl;", "qwer", "asdfgh", "hjkl"]) for _ in range(r.randint(40, 120))),
    "one_token": lambda r: _loop(r.choice(["ha", "!", "no ", "the ", "0"]), r),
}


def clean(n_per_kind: int = 60, seed: int = 0) -> list[tuple[str, str]]:
    r = random.Random(seed)
    return [(k, f(r)) for k, f in CLEAN.items() for _ in range(n_per_kind)]


def degenerate(n_per_kind: int = 20, seed: int = 1) -> list[tuple[str, str]]:
    r = random.Random(seed)
    return [(k, f(r)) for k, f in DEGENERATE.items() for _ in range(n_per_kind)]
