"""The demo's images: small drawings whose look tells their visual kind; clutter grows with difficulty."""
from __future__ import annotations

import base64
import io
import math
import random
from functools import lru_cache

from vlrb.demo.vocab import TOPICS, pseudo_word
from vlrb.demo.world import KINDS

_PALETTES = [((66, 133, 244), (219, 68, 55)), ((15, 157, 88), (244, 180, 0)),
             ((171, 71, 188), (0, 172, 193)), ((255, 112, 67), (92, 107, 192)),
             ((141, 110, 99), (38, 166, 154)), ((236, 64, 122), (124, 179, 66)),
             ((63, 81, 181), (255, 167, 38)), ((0, 137, 123), (229, 57, 53))]


@lru_cache(maxsize=1)
def _font():
    from PIL import ImageFont

    # the bitmap font: ~20x faster to draw than the FreeType default, and text is text to an encoder
    try:
        return ImageFont.load_default_imagefont()
    except AttributeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _draw_chart(d, rnd: random.Random, s: int, clutter: int, pal) -> None:
    for _ in range(clutter // 2):  # gridlines
        y = rnd.randint(s // 8, s - s // 6)
        d.line([(s // 8, y), (s - 4, y)], fill=(225, 225, 225))
    d.line([(s // 8, 4), (s // 8, s - s // 8)], fill=(0, 0, 0))
    d.line([(s // 8, s - s // 8), (s - 4, s - s // 8)], fill=(0, 0, 0))
    n = 3 + clutter
    w = (s - s // 8 - 8) / n
    for j in range(n):
        h = rnd.randint(s // 10, s - s // 4)
        x0 = s // 8 + 3 + j * w
        d.rectangle([x0, s - s // 8 - h, x0 + w * 0.7, s - s // 8 - 1], fill=pal[j % 2])


def _draw_text(d, rnd: random.Random, s: int, clutter: int, pal) -> None:
    d.rectangle([0, 0, s, s // 7], fill=pal[0])
    lines = 3 + clutter
    for j in range(lines):
        y = s // 6 + j * (s - s // 5) // lines
        word = " ".join(pseudo_word(rnd, 2) for _ in range(3))
        d.text((4, y), word, fill=(20, 20, 20), font=_font())


def _draw_shapes(d, rnd: random.Random, s: int, clutter: int, pal) -> None:
    for j in range(2 + clutter):
        cx, cy, r = rnd.randint(10, s - 10), rnd.randint(10, s - 10), rnd.randint(6, s // 3)
        sides = rnd.choice([0, 3, 4, 5, 6])
        if sides == 0:
            d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(0, 0, 0), width=2)
        else:
            phase = rnd.random() * math.pi
            pts = [(cx + r * math.cos(phase + 2 * math.pi * k / sides),
                    cy + r * math.sin(phase + 2 * math.pi * k / sides)) for k in range(sides)]
            d.polygon(pts, outline=(0, 0, 0), fill=pal[0] if j == 0 else None, width=2)
        d.text((cx, cy), "ABCDEFx"[j % 7], fill=(0, 0, 0), font=_font())


def _draw_scene(d, rnd: random.Random, s: int, clutter: int, pal) -> None:
    horizon = rnd.randint(s // 3, s // 2 + 10)
    for y in range(0, horizon, 4):  # sky gradient
        c = 150 + 100 * y // horizon
        d.rectangle([0, y, s, y + 4], fill=(c - 60, c - 20, 255))
    d.rectangle([0, horizon, s, s], fill=(90, 160, 70) if rnd.random() < 0.6 else (220, 200, 140))
    d.ellipse([s - 26, 6, s - 8, 24], fill=(255, 220, 60))
    for _ in range(1 + clutter):
        x, y = rnd.randint(0, s - 16), rnd.randint(horizon - 10, s - 12)
        what = rnd.random()
        if what < 0.35:  # tree
            d.rectangle([x + 5, y, x + 9, y + 12], fill=(100, 60, 30))
            d.ellipse([x, y - 12, x + 14, y + 2], fill=(30, 120, 40))
        elif what < 0.7:  # house
            d.rectangle([x, y, x + 14, y + 12], fill=pal[0])
            d.polygon([(x - 2, y), (x + 7, y - 8), (x + 16, y)], fill=pal[1])
        else:  # car
            d.rectangle([x, y, x + 16, y + 6], fill=pal[1])
            d.ellipse([x + 2, y + 4, x + 6, y + 8], fill=(0, 0, 0))
            d.ellipse([x + 10, y + 4, x + 14, y + 8], fill=(0, 0, 0))


def _draw_diagram(d, rnd: random.Random, s: int, clutter: int, pal) -> None:
    n = 3 + clutter // 2
    centers = []
    for j in range(n):
        ang = 2 * math.pi * j / n
        cx = s / 2 + (s / 2 - 16) * math.cos(ang)
        cy = s / 2 + (s / 2 - 12) * math.sin(ang)
        centers.append((cx, cy))
    for j in range(n):  # arrows around the cycle, plus cross links when cluttered
        a, b = centers[j], centers[(j + 1) % n]
        d.line([a, b], fill=(60, 60, 60), width=1)
        d.ellipse([b[0] - 2, b[1] - 2, b[0] + 2, b[1] + 2], fill=(60, 60, 60))
    for _ in range(clutter // 2):
        a, b = rnd.sample(centers, 2)
        d.line([a, b], fill=(150, 150, 150), width=1)
    for j, (cx, cy) in enumerate(centers):
        d.rounded_rectangle([cx - 12, cy - 7, cx + 12, cy + 7], radius=3, fill=pal[j % 2],
                            outline=(0, 0, 0))
        d.text((cx - 3, cy - 5), "ABCDEFGH"[j], fill=(255, 255, 255), font=_font())


_DRAWERS = {"chart": _draw_chart, "text": _draw_text, "shapes": _draw_shapes,
            "scene": _draw_scene, "diagram": _draw_diagram}
_BACKGROUNDS = {"chart": (255, 255, 255), "text": (250, 245, 230), "shapes": (255, 255, 255),
                "scene": (255, 255, 255), "diagram": (235, 238, 242)}


def draw_image_b64(kind: int, difficulty: float, topic: str, seed: int, size: int = 96) -> str:
    """A small JPEG (base64) whose look tells its kind; clutter grows with difficulty."""
    from PIL import Image, ImageDraw

    rnd = random.Random(seed)
    name = KINDS[kind]
    img = Image.new("RGB", (size, size), _BACKGROUNDS[name])
    draw = ImageDraw.Draw(img)
    palette = _PALETTES[TOPICS[name].index(topic) % len(_PALETTES)]
    _DRAWERS[name](draw, rnd, size, int(round(difficulty * 6)), palette)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")
