"""Drawing of the synthetic "shapes" scenes (hand-written: no library draws labelled scenes like these).

A scene is a textured, noisy background with 0-6 filled shapes (circle, triangle, rectangle, star) of random
colours and sizes from about 5 % to 60 % of the longer image side, overlapping but each keeping at least
60 % of its pixels visible. Boxes are the exact tight bounds of each shape's visible pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPE_CLASSES: tuple[str, ...] = ("circle", "triangle", "rectangle", "star")
MIN_VISIBLE = 0.6


@dataclass
class Shape:
    cls: int  # index into SHAPE_CLASSES
    mask: np.ndarray  # bool H x W, visible pixels
    box: tuple[int, int, int, int]  # continuous 0-based xyxy: (min col, min row, max col + 1, max row + 1)
    size: float  # nominal size in pixels

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8
    objects: list[Shape] = field(default_factory=list)
    crowds: list[Shape] = field(default_factory=list)


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled bicubically to ``h x w``."""
    gh, gw = max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))
    grid = Image.fromarray(rng.random((gh, gw), dtype=np.float32))
    arr = np.asarray(grid.resize((w, h), Image.BICUBIC), dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / max(hi - lo, 1e-6)


def textured_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float ``h x w x 3`` background in [0, 255]: two blended colours, two noise scales, clutter lines."""
    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    t = smooth_noise(rng, h, w, int(rng.integers(3, 8)))[..., None]
    fine = smooth_noise(rng, h, w, int(rng.integers(20, 50)))[..., None] - 0.5
    img = c1 + (c2 - c1) * t + fine * np.float32(rng.uniform(20, 60))
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 6))):  # distractor strokes that are not objects
        pts = [tuple(int(v) for v in rng.uniform(0, 1, 2) * (w, h)) for _ in range(int(rng.integers(2, 4)))]
        draw.line(pts, fill=tuple(int(v) for v in rng.uniform(0, 255, 3)), width=int(rng.integers(1, 4)))
    return np.asarray(canvas, dtype=np.float32)


def shape_polygon(rng: np.random.Generator, cls: int, cx: float, cy: float, size: float) -> list[tuple[float, float]]:
    r = size / 2
    rot = rng.uniform(0, 2 * math.pi)
    if cls == 0:  # circle: dense polygon, drawn as such for a crisp, exact mask
        angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        radii = np.full(64, r)
    elif cls == 1:  # triangle, roughly equilateral
        angles = rot + np.array([0, 2, 4]) * math.pi / 3 + rng.uniform(-0.25, 0.25, 3)
        radii = r * rng.uniform(0.9, 1.0, 3)
    elif cls == 2:  # rectangle with aspect 0.45..1, rotated up to +-20 degrees
        aspect = rng.uniform(0.45, 1.0)
        hw, hh = (r, r * aspect) if rng.random() < 0.5 else (r * aspect, r)
        rot = rng.uniform(-0.35, 0.35)
        corners = np.array([(-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh)])
        rm = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
        xy = corners @ rm.T + (cx, cy)
        return [(float(x), float(y)) for x, y in xy]
    else:  # five-pointed star
        angles = rot + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.4, 0.5))
    return [(float(cx + rr * math.cos(a)), float(cy + rr * math.sin(a))) for a, rr in zip(angles, radii, strict=True)]


def draw_mask(h: int, w: int, polygon: list[tuple[float, float]]) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=1)
    return np.asarray(canvas, dtype=bool)


def fill(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Paint ``mask`` in a random colour that contrasts with what is under it, with a light shading."""
    under = img[mask].mean(axis=0)
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):
        if np.linalg.norm(colour - under) >= 90:
            break
        colour = rng.uniform(0, 255, 3)
    ys, xs = np.nonzero(mask)
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    cx, cy, span = xs.mean(), ys.mean(), max(np.ptp(xs), np.ptp(ys), 1)
    shade = 1 + gx * (xs - cx) / span + gy * (ys - cy) / span
    img[ys, xs] = np.clip(colour[None] * shade[:, None], 0, 255)


def size_range(h: int, w: int) -> tuple[float, float]:
    return 0.05 * max(h, w), min(0.6 * max(h, w), 0.95 * min(h, w))


def place(rng: np.random.Generator, h: int, w: int, lo: float, hi: float) -> tuple[float, float, float]:
    size = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    r = size / 2
    return rng.uniform(r, w - r), rng.uniform(r, h - r), size


def render_scene(
    rng: np.random.Generator,
    h: int,
    w: int,
    *,
    background: np.ndarray | None = None,
    max_objects: int = 6,
    crowd: bool = False,
    noise_sigma: tuple[float, float] = (4.0, 12.0),
) -> Scene:
    """Draw one scene; ``background`` (float ``h x w x 3``) defaults to :func:`textured_background`."""
    img = textured_background(rng, h, w) if background is None else background.astype(np.float32).copy()
    scene = Scene(image=np.zeros((h, w, 3), np.uint8))
    lo, hi = size_range(h, w)
    if crowd:  # a cluster of small same-class shapes, annotated as one iscrowd region
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        cx, cy, region = place(rng, h, w, 0.25 * min(h, w), 0.4 * min(h, w))
        union = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(6, 13))):
            s = rng.uniform(0.25, 0.4) * lo * 2
            px, py = cx + rng.uniform(-0.4, 0.4) * region, cy + rng.uniform(-0.4, 0.4) * region
            m = draw_mask(h, w, shape_polygon(rng, cls, px, py, s))
            if m.any():
                fill(img, m, rng)
                union |= m
        if union.any():
            scene.crowds.append(Shape(cls, union, tight_box(union), region))
    n = int(rng.choice(np.arange(max_objects + 1), p=_count_probs(max_objects)))
    full_areas: list[int] = []
    for _ in range(n):
        for _attempt in range(30):
            cls = int(rng.integers(len(SHAPE_CLASSES)))
            cx, cy, size = place(rng, h, w, lo, hi)
            m = draw_mask(h, w, shape_polygon(rng, cls, cx, cy, size))
            if m.sum() < 16:
                continue
            if all((o.mask & ~m).sum() >= MIN_VISIBLE * a for o, a in zip(scene.objects, full_areas, strict=True)):
                break
        else:
            continue
        for o in scene.objects:
            o.mask &= ~m
        for c in scene.crowds:
            c.mask &= ~m
        fill(img, m, rng)
        scene.objects.append(Shape(cls, m, (0, 0, 0, 0), size))
        full_areas.append(int(m.sum()))
    for o in scene.objects + scene.crowds:
        o.box = tight_box(o.mask)
    scene.crowds = [c for c in scene.crowds if c.box is not None]
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(*noise_sigma))
    img += np.float32(0.5)  # round to nearest on the uint8 cast
    scene.image = np.clip(img, 0, 255).astype(np.uint8)
    return scene


def _count_probs(max_objects: int) -> np.ndarray:
    p = np.ones(max_objects + 1)
    p[0] = 0.3  # a few empty images
    return p / p.sum()


def outline(mask: np.ndarray, width: int = 3) -> np.ndarray:
    """Pixels within ``width // 2`` px outside ``mask`` (the VOC-style 'void' border)."""
    grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(width))
    return (np.asarray(grown) > 0) & ~mask
