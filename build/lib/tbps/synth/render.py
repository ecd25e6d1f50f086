"""Draw one photo of a synthetic pedestrian with PIL.

The figure is built from simple shapes whose colours are the identity's
attributes, so what a caption says is visible in the picture. Everything that
should *not* identify the person varies per photo, as between real cameras:
view (front/back/side), position and scale, walking pose, background clutter,
another passer-by at the edge, occluding objects, colour cast, exposure,
noise, blur and mirroring. All randomness comes from the ``rng`` argument.

Drawing happens at twice the output size and is then box-filtered down, which
is a cheap way to get anti-aliased edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tbps.synth.people import Person, random_person
from tbps.synth.vocabulary import COLOURS, HAIR_COLOURS, RGB, SLEEVES

SUPERSAMPLE = 2

_HAIR_DROP = {"short": 0.0, "medium": 0.07, "long": 0.2, "ponytail": 0.0}
"""How far hair falls below the shoulders, as a fraction of the figure height."""
_BUILD_WIDTH = {"slim": 0.22, "average": 0.26, "heavy": 0.32}
"""Shoulder width as a fraction of the figure height."""


def _shade(rgb: RGB, factor: float) -> RGB:
    return tuple(int(min(255, max(0, c * factor))) for c in rgb)  # type: ignore[return-value]


def _random_rgb(rng: np.random.Generator, lo: int = 30, hi: int = 230) -> RGB:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))  # type: ignore[return-value]


def _limb(draw: ImageDraw.ImageDraw, p0: tuple[float, float], p1: tuple[float, float], width: float,
          fill: RGB, width_end: float | None = None) -> None:
    """A tapered, round-ended segment (arm, leg) from ``p0`` to ``p1``."""
    (x0, y0), (x1, y1) = p0, p1
    length = math.hypot(x1 - x0, y1 - y0) or 1.0
    nx, ny = -(y1 - y0) / length, (x1 - x0) / length
    w0, w1 = width / 2, (width_end if width_end is not None else width) / 2
    draw.polygon([(x0 + nx * w0, y0 + ny * w0), (x1 + nx * w1, y1 + ny * w1),
                  (x1 - nx * w1, y1 - ny * w1), (x0 - nx * w0, y0 - ny * w0)], fill=fill)
    draw.ellipse([x0 - w0, y0 - w0, x0 + w0, y0 + w0], fill=fill)
    draw.ellipse([x1 - w1, y1 - w1, x1 + w1, y1 + w1], fill=fill)


def _lerp(p0: tuple[float, float], p1: tuple[float, float], t: float) -> tuple[float, float]:
    return (p0[0] + (p1[0] - p0[0]) * t, p0[1] + (p1[1] - p0[1]) * t)


def _muted_rgb(rng: np.random.Generator, lo: int, hi: int) -> RGB:
    """Walls and pavements: mostly grey-ish, with a colour cast."""
    grey = rng.uniform(lo, hi)
    return tuple(int(min(255, max(0, grey + d))) for d in rng.normal(0.0, 22.0, size=3))  # type: ignore


def _background(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    horizon = h * rng.uniform(0.45, 0.85)
    draw.rectangle([0, 0, w, horizon], fill=_muted_rgb(rng, 60, 220))
    draw.rectangle([0, horizon, w, h], fill=_muted_rgb(rng, 40, 170))
    palette = list(COLOURS.values())
    for _ in range(int(rng.integers(2, 8))):
        # Clutter sometimes uses attribute colours, so colour alone cannot be matched to the person.
        fill = palette[int(rng.integers(len(palette)))].rgb if rng.random() < 0.4 else _random_rgb(rng, 20, 240)
        kind = rng.random()
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.1, 1.0) * h
        if kind < 0.5:
            draw.rectangle([x0, y0, x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.05, 0.4) * h], fill=fill)
        elif kind < 0.75:
            draw.ellipse([x0, y0, x0 + rng.uniform(0.1, 0.5) * w, y0 + rng.uniform(0.05, 0.25) * h], fill=fill)
        else:
            draw.line([x0, 0, x0 + rng.uniform(-0.1, 0.1) * w, h], fill=fill, width=int(rng.integers(1, 6)))


@dataclass(frozen=True)
class _Pose:
    """Where a figure's parts go: the view and the body's key points, in pixels."""

    view: str
    """"front", "back" or "side" (a side view faces right; mirroring later gives the other side)."""
    cx: float
    top: float
    fh: float
    """Centre line, head top and height of the figure."""
    shoulder_w: float
    hip_w: float
    head_r: float
    head_cy: float
    shoulder_y: float
    hip_y: float
    foot_y: float
    leg_w: float
    arm_w: float
    hips: list[tuple[float, float]]
    feet: list[tuple[float, float]]
    shoulders: list[tuple[float, float]]
    hands: list[tuple[float, float]]
    """Per side: index 0 is the far arm in side view, 1 the near one."""
    facing: float = 1.0


def _pose(person: Person, rng: np.random.Generator, cx: float, top: float, fh: float) -> _Pose:
    """Draw the view, build and walking pose of one figure (every random draw of a figure happens here)."""
    view = ("front", "back", "side")[int(rng.choice(3, p=[0.45, 0.35, 0.2]))]
    shoulder_w = fh * _BUILD_WIDTH[person.build] * rng.uniform(0.93, 1.07)
    if view == "side":
        shoulder_w *= 0.6
    hip_w = shoulder_w * (0.9 if person.gender == "female" else 0.82)
    head_r = fh * 0.062
    shoulder_y = top + fh * 0.15
    hip_y = top + fh * 0.5
    foot_y = top + fh * 0.965
    leg_w = fh * (0.1 if person.build == "heavy" else 0.085) * (0.85 if view == "side" else 1.0)
    arm_w = leg_w * 0.75

    # Walking pose: in side view legs and arms swing along the direction of walking.
    stride = rng.uniform(-1.0, 1.0)
    if view == "side":
        feet = [(cx + stride * fh * 0.16, foot_y), (cx - stride * fh * 0.16, foot_y)]
        hips = [(cx, hip_y), (cx, hip_y)]
    else:
        spread = fh * rng.uniform(0.0, 0.05)
        hips = [(cx - hip_w * 0.25, hip_y), (cx + hip_w * 0.25, hip_y)]
        feet = [(cx - hip_w * 0.28 - spread, foot_y), (cx + hip_w * 0.28 + spread, foot_y)]

    arm_len = fh * 0.34
    swing = rng.uniform(-0.45, 0.45) if view == "side" else rng.uniform(0.02, 0.2)
    shoulders = [(cx - shoulder_w * 0.42, shoulder_y + arm_w * 0.4), (cx + shoulder_w * 0.42, shoulder_y + arm_w * 0.4)]
    if view == "side":
        shoulders = [(cx, shoulder_y + arm_w * 0.4)] * 2
        angles = [swing, -swing]
    else:
        angles = [-swing, swing]  # arms hang slightly away from the body
    hands = [(s[0] + math.sin(a) * arm_len, s[1] + math.cos(a) * arm_len) for s, a in zip(shoulders, angles, strict=True)]
    return _Pose(view=view, cx=cx, top=top, fh=fh, shoulder_w=shoulder_w, hip_w=hip_w, head_r=head_r,
                 head_cy=top + head_r, shoulder_y=shoulder_y, hip_y=hip_y, foot_y=foot_y, leg_w=leg_w, arm_w=arm_w,
                 hips=hips, feet=feet, shoulders=shoulders, hands=hands)


def _draw_behind_body(draw: ImageDraw.ImageDraw, person: Person, pose: _Pose) -> None:
    """A backpack seen from the side, and hair falling behind the shoulders (beside the neck, front view)."""
    cx, fh, view = pose.cx, pose.fh, pose.view
    if person.bag == "backpack" and view == "side":
        bx = cx - pose.facing * pose.shoulder_w * 0.5
        draw.rounded_rectangle([bx - fh * 0.1, pose.shoulder_y + fh * 0.03, bx + fh * 0.02, pose.hip_y - fh * 0.04],
                               radius=fh * 0.02, fill=person.rgb(person.bag_colour) if person.bag_colour else None)
    drop = _HAIR_DROP[person.hair_length]
    if view == "front" and drop > 0:
        head_r = pose.head_r
        draw.rounded_rectangle([cx - head_r * 1.15, pose.head_cy, cx + head_r * 1.15, pose.shoulder_y + fh * drop],
                               radius=head_r * 0.5, fill=HAIR_COLOURS[person.hair_colour].rgb)


def _draw_legs(draw: ImageDraw.ImageDraw, person: Person, pose: _Pose) -> None:
    """Legs, shoes and the lower garment (trousers, shorts, skirt or the skirt of a dress)."""
    cx, fh, hip_y, foot_y, leg_w, hip_w = pose.cx, pose.fh, pose.hip_y, pose.foot_y, pose.leg_w, pose.hip_w
    lower = person.rgb(person.lower_colour)
    shoes = person.rgb(person.shoes_colour)
    legs_covered = {"trousers": 1.0, "jeans": 1.0, "shorts": 0.4}.get(person.lower, 0.0)
    for hip, foot in zip(pose.hips, pose.feet, strict=True):
        _limb(draw, hip, foot, leg_w, person.skin, leg_w * 0.8)
        if legs_covered:
            knee = _lerp(hip, foot, legs_covered)
            _limb(draw, hip, knee, leg_w * 1.05, lower, leg_w * (0.9 if legs_covered == 1.0 else 1.05))
        boot = person.shoes == "boots"
        sw, sh = leg_w * 1.4, fh * (0.045 if not boot else 0.05)
        sx = foot[0] + (pose.facing * sw * 0.25 if pose.view == "side" else 0.0)
        if boot:
            draw.rectangle([foot[0] - leg_w * 0.45, foot_y - fh * 0.1, foot[0] + leg_w * 0.45, foot_y], fill=shoes)
        draw.ellipse([sx - sw / 2, foot_y - sh / 2, sx + sw / 2, foot_y + sh / 2], fill=shoes)
    if legs_covered:
        draw.rectangle([cx - hip_w / 2, hip_y - fh * 0.02, cx + hip_w / 2, hip_y + fh * 0.06], fill=lower)
    skirt_len = {"skirt": 0.45, "long skirt": 0.8, "dress": 0.45}.get(person.lower)
    if skirt_len:
        bottom = hip_y + (foot_y - hip_y) * skirt_len
        flare = hip_w * 0.5 + fh * 0.06 * (1.0 + skirt_len)
        draw.polygon([(cx - hip_w / 2, hip_y - fh * 0.02), (cx + hip_w / 2, hip_y - fh * 0.02),
                      (cx + flare, bottom), (cx - flare, bottom)], fill=lower)


def _draw_arm(draw: ImageDraw.ImageDraw, person: Person, pose: _Pose, side: int) -> None:
    """Arm ``side`` (0 or 1) with its sleeve, if the upper garment has one."""
    sleeve_t = {"long": 0.92, "short": 0.38, "none": 0.0}[SLEEVES.get(person.upper, "long")]
    shoulder, hand, arm_w = pose.shoulders[side], pose.hands[side], pose.arm_w
    _limb(draw, shoulder, hand, arm_w, person.skin, arm_w * 0.8)
    if sleeve_t:
        _limb(draw, shoulder, _lerp(shoulder, hand, sleeve_t), arm_w * 1.1, person.rgb(person.upper_colour), arm_w)


def _draw_torso(draw: ImageDraw.ImageDraw, person: Person, pose: _Pose) -> None:
    """Torso (a coat reaches down over the thighs), neck, garment details and scarf."""
    cx, fh, top, head_r, shoulder_y = pose.cx, pose.fh, pose.top, pose.head_r, pose.shoulder_y
    shoulder_w, hip_w = pose.shoulder_w, pose.hip_w
    upper = person.rgb(person.upper_colour)
    torso_bottom = pose.hip_y + (fh * 0.12 if person.upper == "coat" else fh * 0.01)
    draw.polygon([(cx - shoulder_w / 2, shoulder_y), (cx + shoulder_w / 2, shoulder_y),
                  (cx + hip_w / 2 * (1.1 if person.upper == "coat" else 1.0), torso_bottom),
                  (cx - hip_w / 2 * (1.1 if person.upper == "coat" else 1.0), torso_bottom)], fill=upper)
    draw.rectangle([cx - head_r * 0.4, top + head_r * 1.6, cx + head_r * 0.4, shoulder_y + 1], fill=person.skin)
    if person.upper in ("jacket", "coat", "shirt") and pose.view == "front":
        # Open front / button line: a darker centre stripe.
        draw.line([cx, shoulder_y + fh * 0.01, cx, torso_bottom], fill=_shade(upper, 0.6), width=max(1, int(fh * 0.012)))
    if person.upper == "hoodie" and pose.view != "front":
        draw.ellipse([cx - head_r * 1.1, shoulder_y - head_r * 0.5, cx + head_r * 1.1, shoulder_y + head_r * 0.8],
                     fill=_shade(upper, 0.85))

    if person.scarf_colour:
        scarf = person.rgb(person.scarf_colour)
        draw.rounded_rectangle([cx - head_r * 0.9, shoulder_y - head_r * 0.45, cx + head_r * 0.9,
                                shoulder_y + head_r * 0.35], radius=head_r * 0.3, fill=scarf)
        if pose.view == "front":
            draw.rectangle([cx + head_r * 0.1, shoulder_y, cx + head_r * 0.55, shoulder_y + fh * 0.12], fill=scarf)


def _draw_bag_over_torso(draw: ImageDraw.ImageDraw, person: Person, pose: _Pose) -> None:
    """A backpack seen from behind, its straps seen from the front, or a shoulder bag and its strap."""
    cx, fh, shoulder_y, hip_y, shoulder_w, hip_w = pose.cx, pose.fh, pose.shoulder_y, pose.hip_y, pose.shoulder_w, pose.hip_w
    bag = person.rgb(person.bag_colour) if person.bag_colour else None
    if person.bag == "backpack" and pose.view == "back":
        draw.rounded_rectangle([cx - shoulder_w * 0.36, shoulder_y + fh * 0.03, cx + shoulder_w * 0.36,
                                hip_y - fh * 0.03], radius=fh * 0.025, fill=bag)
    elif person.bag == "backpack" and pose.view == "front":
        for side in (-1, 1):
            x = cx + side * shoulder_w * 0.28
            draw.line([x, shoulder_y, x, shoulder_y + fh * 0.17], fill=bag, width=max(2, int(fh * 0.025)))
    elif person.bag == "shoulder bag":
        side = 1 if pose.view != "side" else -pose.facing
        draw.line([cx - side * shoulder_w * 0.35, shoulder_y, cx + side * hip_w * 0.55, hip_y - fh * 0.02],
                  fill=bag, width=max(2, int(fh * 0.02)))
        bx = cx + side * hip_w * 0.55
        draw.rounded_rectangle([bx - fh * 0.065, hip_y - fh * 0.06, bx + fh * 0.065, hip_y + fh * 0.05],
                               radius=fh * 0.012, fill=bag)


def _draw_handbag(draw: ImageDraw.ImageDraw, person: Person, pose: _Pose) -> None:
    """A handbag hanging from the near hand."""
    if person.bag != "handbag":
        return
    fh = pose.fh
    bag = person.rgb(person.bag_colour) if person.bag_colour else None
    hx, hy = pose.hands[1 if pose.view != "side" else 0]
    draw.arc([hx - fh * 0.035, hy - fh * 0.06, hx + fh * 0.035, hy + fh * 0.01], 180, 360, fill=bag,
             width=max(1, int(fh * 0.01)))
    draw.rounded_rectangle([hx - fh * 0.06, hy - fh * 0.01, hx + fh * 0.06, hy + fh * 0.08],
                           radius=fh * 0.01, fill=bag)


def _draw_head(draw: ImageDraw.ImageDraw, person: Person, pose: _Pose) -> None:
    """Head and hair (a back view shows only hair), ponytail, glasses and hat."""
    cx, fh, top, head_r, head_cy, view = pose.cx, pose.fh, pose.top, pose.head_r, pose.head_cy, pose.view
    hair = HAIR_COLOURS[person.hair_colour].rgb
    head_box = [cx - head_r * 0.9, top, cx + head_r * 0.9, top + head_r * 2]
    if view == "back":
        draw.ellipse([head_box[0] - 1, head_box[1] - 1, head_box[2] + 1, head_box[3] + 1], fill=hair)
        drop = _HAIR_DROP[person.hair_length]
        if drop > 0:
            draw.rounded_rectangle([cx - head_r * 0.95, head_cy, cx + head_r * 0.95, pose.shoulder_y + fh * drop],
                                   radius=head_r * 0.5, fill=hair)
    else:
        draw.ellipse(head_box, fill=person.skin)
        crown = [head_box[0] - head_r * 0.08, top - head_r * 0.1, head_box[2] + head_r * 0.08, top + head_r * 1.3]
        if view == "side":
            draw.pieslice(crown, 90, 360, fill=hair)  # hair covers the back of the head
        else:
            draw.chord(crown, 170, 370, fill=hair)
    if person.hair_length == "ponytail" and view != "front":
        px = cx - pose.facing * head_r * 1.1 if view == "side" else cx
        draw.ellipse([px - head_r * 0.35, head_cy, px + head_r * 0.35, head_cy + head_r * 1.8], fill=hair)
    if person.glasses and view != "back":
        _draw_glasses(draw, pose)
    if person.hat and person.hat_colour:
        _draw_hat(draw, person, pose)


def _draw_glasses(draw: ImageDraw.ImageDraw, pose: _Pose) -> None:
    cx, head_r = pose.cx, pose.head_r
    ey = pose.head_cy - head_r * 0.05
    g = (20, 20, 20)
    lw = max(1, int(head_r * 0.18))
    if pose.view == "front":
        for side in (-1, 1):
            ex = cx + side * head_r * 0.4
            draw.rectangle([ex - head_r * 0.28, ey - head_r * 0.16, ex + head_r * 0.28, ey + head_r * 0.16],
                           outline=g, width=lw)
        draw.line([cx - head_r * 0.8, ey, cx + head_r * 0.8, ey], fill=g, width=lw)
    else:
        draw.line([cx, ey, cx + pose.facing * head_r * 0.9, ey], fill=g, width=lw)


def _draw_hat(draw: ImageDraw.ImageDraw, person: Person, pose: _Pose) -> None:
    cx, top, head_r = pose.cx, pose.top, pose.head_r
    hat = person.rgb(person.hat_colour)
    if person.hat == "hat":
        draw.ellipse([cx - head_r * 1.6, top + head_r * 0.35, cx + head_r * 1.6, top + head_r * 0.85], fill=hat)
        draw.rounded_rectangle([cx - head_r * 0.85, top - head_r * 0.35, cx + head_r * 0.85, top + head_r * 0.6],
                               radius=head_r * 0.3, fill=hat)
        return
    depth = 1.25 if person.hat == "beanie" else 1.05
    draw.chord([cx - head_r * 1.0, top - head_r * 0.15, cx + head_r * 1.0, top + head_r * depth * 1.2],
               180, 360, fill=hat)
    if person.hat == "cap":
        if pose.view == "side":
            draw.rectangle([cx, top + head_r * 0.45, cx + pose.facing * head_r * 1.6, top + head_r * 0.65], fill=hat)
        elif pose.view == "front":
            draw.ellipse([cx - head_r * 0.9, top + head_r * 0.4, cx + head_r * 0.9, top + head_r * 0.8],
                         fill=_shade(hat, 0.8))


def _figure(draw: ImageDraw.ImageDraw, person: Person, rng: np.random.Generator, w: int, h: int,
            cx: float, top: float, fh: float) -> str:
    """Draw ``person`` standing with the head at ``top``, centred on ``cx``, ``fh`` pixels tall.

    Parts are painted back to front (in side view the far arm goes before the torso, the near
    one after). Returns the view drawn: "front", "back" or "side".
    """
    pose = _pose(person, rng, cx, top, fh)
    _draw_behind_body(draw, person, pose)
    _draw_legs(draw, person, pose)
    if pose.view == "side":
        _draw_arm(draw, person, pose, 1)
    _draw_torso(draw, person, pose)
    _draw_bag_over_torso(draw, person, pose)
    _draw_arm(draw, person, pose, 0)
    if pose.view != "side":
        _draw_arm(draw, person, pose, 1)
    _draw_handbag(draw, person, pose)
    _draw_head(draw, person, pose)
    return pose.view


@dataclass(frozen=True)
class Photo:
    image: Image.Image
    hidden: frozenset[str]
    """Attributes this photo does not show (glasses seen from behind, shoes behind an occluder);
    annotators describe what they see, so captions of this photo leave them out."""


def render_photo(person: Person, rng: np.random.Generator, size: tuple[int, int]) -> Photo:
    """One RGB photo of ``person`` at ``size`` = (width, height)."""
    out_w, out_h = size
    w, h = out_w * SUPERSAMPLE, out_h * SUPERSAMPLE
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    _background(draw, rng, w, h)

    if rng.random() < 0.12:
        # A passer-by at the image edge: someone else's clothes in the frame, as in real crops.
        stranger = random_person(rng)
        sfh = h * rng.uniform(0.75, 0.95)
        scx = w * (rng.uniform(-0.35, -0.15) if rng.random() < 0.5 else rng.uniform(1.15, 1.35))
        _figure(draw, stranger, rng, w, h, scx, rng.uniform(0.0, h - sfh), sfh)

    fh = h * rng.uniform(0.78, 0.96)
    top = rng.uniform(0.01 * h, max(0.011 * h, h - fh - 0.005 * h))
    cx = w * (0.5 + rng.uniform(-0.1, 0.1))
    hidden = set()
    if _figure(draw, person, rng, w, h, cx, top, fh) == "back":
        hidden.add("glasses")

    if rng.random() < 0.25:
        # Occluder: a car, railing or pole in front of the person.
        fill = _random_rgb(rng, 20, 230)
        if rng.random() < 0.6:
            y0 = h * rng.uniform(0.7, 0.9)
            draw.rectangle([0, y0, w, h], fill=fill)
            if y0 < top + fh * 0.95:
                hidden.add("shoes")
        else:
            x0 = w * rng.uniform(-0.1, 0.15)
            if rng.random() < 0.5:
                x0 = w - x0 - w * 0.25
            draw.rectangle([x0, h * rng.uniform(0.0, 0.5), x0 + w * rng.uniform(0.12, 0.28), h], fill=fill)

    img = img.reduce(SUPERSAMPLE)
    # Camera colour response and exposure differ between cameras; sensor noise on top.
    pixels = np.asarray(img, dtype=np.float32)
    gain = (rng.uniform(0.82, 1.18, size=3) * rng.uniform(0.7, 1.2)).astype(np.float32)
    pixels *= gain
    pixels += np.float32(rng.uniform(-12, 12) + 0.5)  # + 0.5: round, not truncate, below
    sigma = rng.uniform(0.0, 7.0)
    if sigma > 1.0:
        noise = rng.standard_normal(size=pixels.shape, dtype=np.float32)
        noise *= np.float32(sigma)
        pixels += noise
    np.clip(pixels, 0, 255, out=pixels)
    img = Image.fromarray(pixels.astype(np.uint8))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return Photo(img, frozenset(hidden))
