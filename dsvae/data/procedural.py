"""Procedural sprites: the embedded default data set, drawn with numpy only.

Pixel-art humanoids with the same factors, motions and file layout as the real
Sprites benchmark, so that a fresh offline machine can train and demo without
downloading anything:

- four static factors with six values each: body (skin), bottom (pants), top
  (shirt) and hair. Every value has its own colour and most also their own
  shape (hair style, sleeves / stripes / tunic, long pants / shorts / skirt,
  elf ears), and colours of different factors never coincide;
- nine motions: walk, spellcast and slash, seen from the front, facing left
  and facing right (the mirror image of facing left), 8 frames each;
- 64 x 64 RGB frames on black, a character about 40 pixels tall.

How it is drawn: for each action, view and frame a *pose* (joint positions)
is rasterised once into boolean part masks (head, torso, arms, legs, every
hair style, skirt, ...). Compositing those masks in a fixed depth order for a
style combination gives integer *label maps* (which palette entry each pixel
shows); a character is then one palette lookup of the label maps of its style
combination. Only pose changes with time; colours and styles come from the
attributes alone, so static and dynamic information are exactly separable.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dsvae.data import schema

GENERATOR_VERSION = "1"
SIZE = schema.IMAGE_SIZE
FRAMES = schema.N_FRAMES
CX = (SIZE - 1) / 2.0  # the character's vertical axis; mirroring maps x -> SIZE - 1 - x

# ---------------------------------------------------------------------------------
# Factor values: name, colour and style of each value.
# ---------------------------------------------------------------------------------

#: Body (skin): colour; the blue elves also have pointed ears.
BODY_VALUES = ("light skin", "tan skin", "brown skin", "dark skin", "green orc skin", "blue elf skin")
BODY_COLOURS = ((252, 216, 178), (222, 165, 108), (160, 100, 58), (98, 58, 34), (116, 178, 72), (110, 150, 225))
BODY_STYLES = (0, 0, 0, 0, 0, 1)  # 1 = pointed ears

#: Bottom (pants): colour and cut (0 long trousers, 1 shorts, 2 skirt).
BOTTOM_VALUES = ("blue jeans", "grey trousers", "olive shorts", "teal shorts", "maroon skirt", "pink skirt")
BOTTOM_COLOURS = ((48, 78, 170), (118, 118, 124), (112, 118, 30), (0, 128, 118), (128, 16, 56), (250, 140, 200))
BOTTOM_STYLES = (0, 0, 1, 1, 2, 2)
BOTTOM_STYLE_NAMES = ("long", "shorts", "skirt")

#: Top (shirt): colour, accent colour (stripes, belt, open front) and cut.
TOP_VALUES = ("red tee", "white long-sleeve shirt", "green tank top", "yellow striped tee", "purple tunic",
              "cyan vest")
TOP_COLOURS = ((214, 38, 38), (238, 238, 238), (36, 138, 52), (250, 212, 0), (126, 56, 182), (0, 206, 220))
# only the striped tee (stripes), the tunic (belt) and the vest (open front) show their accent
TOP_ACCENTS = ((214, 38, 38), (238, 238, 238), (36, 138, 52), (150, 64, 200), (226, 170, 40), (250, 250, 250))
TOP_STYLES = (0, 1, 2, 3, 4, 5)
TOP_STYLE_NAMES = ("tee", "long sleeves", "tank top", "striped tee", "tunic", "vest")

#: Hair: colour and style.
HAIR_VALUES = ("blue short", "blond spiky", "black long", "ginger pigtails", "silver bob", "green mohawk")
HAIR_COLOURS = ((30, 110, 255), (255, 236, 128), (44, 40, 62), (236, 96, 16), (196, 200, 214), (150, 240, 20))
HAIR_STYLES = (0, 1, 2, 3, 4, 5)
HAIR_STYLE_NAMES = ("short", "spiky", "long", "pigtails", "bob", "mohawk")

FACTOR_VALUES = {"body": BODY_VALUES, "bottom": BOTTOM_VALUES, "top": TOP_VALUES, "hair": HAIR_VALUES}

# Colours that are the same for everybody (eyes, shoes, props of the motions).
EYE_COLOUR = (24, 20, 40)
SHOE_COLOUR = (110, 60, 110)
BLADE_COLOUR = (176, 230, 250)
HILT_COLOUR = (200, 150, 60)
GLOW_COLOUR = (220, 140, 255)
GLOW_CORE_COLOUR = (255, 235, 255)
TRAIL_COLOUR = (70, 90, 120)
SHADE = 0.7  # far limbs and the back of the hair are this much darker

# ---------------------------------------------------------------------------------
# Part labels: the palette index each pixel of a label map shows.
# ---------------------------------------------------------------------------------
(BG, SKIN, SKIN_SHADE, EYE, TOP, TOP_SHADE, TOP_ACCENT, PANTS, PANTS_SHADE, HAIR, HAIR_SHADE,
 SHOE, SHOE_SHADE, BLADE, HILT, GLOW, GLOW_CORE, TRAIL) = range(18)
N_LABELS = 18
LABEL_NAMES = ("background", "skin", "skin shade", "eye", "top", "top shade", "top accent", "pants", "pants shade",
               "hair", "hair shade", "shoe", "shoe shade", "blade", "hilt", "glow", "glow core", "trail")
#: Labels whose colour each static factor decides.
FACTOR_LABELS = {
    "body": (SKIN, SKIN_SHADE),
    "bottom": (PANTS, PANTS_SHADE),
    "top": (TOP, TOP_SHADE, TOP_ACCENT),
    "hair": (HAIR, HAIR_SHADE),
}
#: Labels drawn the same for every character (eyes, shoes, props of the motions).
FIXED_LABELS = (EYE, SHOE, SHOE_SHADE, BLADE, HILT, GLOW, GLOW_CORE, TRAIL)

# ---------------------------------------------------------------------------------
# Rasterising primitives on the 64 x 64 grid (pixel centres at integer coordinates).
# ---------------------------------------------------------------------------------
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)


def _capsule(p0, p1, r: float) -> np.ndarray:
    """Pixels within ``r`` of the segment p0-p1 (points are (x, y))."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    den = dx * dx + dy * dy
    if den == 0:
        s = np.zeros_like(_XX)
    else:
        s = np.clip(((_XX - x0) * dx + (_YY - y0) * dy) / den, 0.0, 1.0)
    return (_XX - x0 - s * dx) ** 2 + (_YY - y0 - s * dy) ** 2 <= r * r


def _ellipse(c, rx: float, ry: float) -> np.ndarray:
    return ((_XX - c[0]) / rx) ** 2 + ((_YY - c[1]) / ry) ** 2 <= 1.0


def _rect(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return (_XX >= x0) & (_XX <= x1) & (_YY >= y0) & (_YY <= y1)


def _polygon(points) -> np.ndarray:
    """Pixels whose centre is inside the polygon (even-odd rule)."""
    inside = np.zeros(_XX.shape, dtype=bool)
    pts = list(points)
    for (xa, ya), (xb, yb) in zip(pts, pts[1:] + pts[:1]):
        if ya == yb:
            continue
        crosses = (_YY >= min(ya, yb)) & (_YY < max(ya, yb))
        x_at = xa + (_YY - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (_XX < x_at)
    return inside


def _direction(angle_deg: float, facing: int = -1) -> np.ndarray:
    """Unit vector of an angle measured from straight down (0) towards ``facing`` x (90) and up (180)."""
    a = np.deg2rad(angle_deg)
    return np.array([facing * np.sin(a), np.cos(a)])


def _chain(start, angles, lengths, facing: int = -1) -> list[np.ndarray]:
    """Joint positions of a limb: start, then each segment at its absolute angle."""
    pts = [np.asarray(start, dtype=np.float64)]
    for angle, length in zip(angles, lengths):
        pts.append(pts[-1] + length * _direction(angle, facing))
    return pts


# ---------------------------------------------------------------------------------
# Poses: joint positions of every (action, view, frame).
# ---------------------------------------------------------------------------------
UPPER_ARM, FOREARM, THIGH, SHIN = 5.0, 5.0, 5.5, 5.0
ARM_R, LEG_R = 1.5, 1.9
HEAD_Y, SHOULDER_Y, HIP_Y = 20.0, 29.5, 40.0
VIEWS = ("front", "side")  # side = facing left; facing right is its mirror image

# Spellcast and slash reuse poses like the real sheets: frame -> pose key.
SPELL_FRAMES = (0, 1, 2, 3, 4, 5, 4, 6)
SLASH_FRAMES = (0, 1, 2, 3, 4, 5, 4, 0)
# (upper arm, forearm) angles of the spellcast poses; glow radius.
SPELL_FRONT = ((8, 14), (45, 70), (85, 110), (115, 140), (135, 160), (140, 165), (140, 165))
SPELL_SIDE = ((8, 14), (40, 60), (70, 90), (92, 112), (105, 125), (110, 130), (110, 130))
SPELL_GLOW = (0.0, 0.0, 1.2, 2.0, 2.7, 3.4, 4.4)
# (upper arm, forearm, sword) angles of the slash poses, front view (90 = outwards) and side view (90 = forwards).
SLASH_FRONT = ((10, 20, 50), (70, 110, 150), (140, 170, 200), (150, 185, 215), (35, 300, 315), (20, 330, 345))
SLASH_SIDE = ((12, 40, 75), (100, 150, 195), (160, 200, 235), (135, 120, 125), (85, 75, 80), (40, 25, 20))
SLASH_LEGS = ((0, 0), (0, 0), (-4, 4), (14, -10), (20, -14), (20, -14))  # (near, far) leg angles, side view
SWORD_LEN = 11.0


class _Pose:
    """Joint positions of one frame (facing left for the side view)."""

    def __init__(self, view: str, bob: float = 0.0) -> None:
        self.view = view
        self.head = (CX, HEAD_Y + bob)
        self.bob = bob
        self.back_arms: list[list[np.ndarray]] = []
        self.front_arms: list[list[np.ndarray]] = []
        self.back_legs: list[list[np.ndarray]] = []
        self.front_legs: list[list[np.ndarray]] = []
        self.sword: tuple[np.ndarray, np.ndarray] | None = None  # hand, unit direction
        self.glows: list[tuple[np.ndarray, float]] = []
        self.trail: list[np.ndarray] = []


def _front_shoulders(bob: float) -> tuple[tuple[float, float], tuple[float, float]]:
    return (CX - 7.0, SHOULDER_Y + bob), (CX + 7.0, SHOULDER_Y + bob)


def _front_leg(side: int, lift: float, bob: float) -> list[np.ndarray]:
    """Front-view leg on ``side`` (-1 viewer's left, +1 right), foot raised by ``lift``."""
    x = CX + side * 3.0
    hip = np.array([x, HIP_Y + bob])
    foot_y = HIP_Y + THIGH + SHIN - 0.5 - lift
    knee = np.array([x + side * 0.4 * lift, HIP_Y + THIGH - 0.6 * lift + 0.5 * bob])
    return [hip, knee, np.array([x, foot_y])]


def _side_leg(angle: float, bend: float, bob: float) -> list[np.ndarray]:
    return _chain((CX, HIP_Y + bob), (angle, angle - bend), (THIGH, SHIN))


def _walk(view: str, t: int) -> _Pose:
    phase = 2 * np.pi * t / FRAMES
    s, c = np.sin(phase), np.cos(phase)
    bob = 1.0 if abs(s) > 0.9 else 0.0  # hips lowest at the longest stride
    pose = _Pose(view, bob)
    if view == "front":
        left, right = _front_shoulders(bob)
        arm = np.sin(phase - np.pi / 4)  # the arms lag the legs a little: no two frames alike
        for side, shoulder, swing in ((-1, left, -arm), (1, right, arm)):
            fwd = max(swing, 0.0)
            # an arm swinging towards the viewer looks shorter and bends in
            upper = 8 + 10 * fwd
            fore = upper + 35 * fwd
            lengths = (UPPER_ARM * (1 - 0.15 * fwd), FOREARM * (1 - 0.45 * fwd))
            pose.front_arms.append(_chain(shoulder, (upper, fore), lengths, facing=side))
        pose.front_legs.append(_front_leg(-1, 3.0 * max(s, 0.0), bob))
        pose.front_legs.append(_front_leg(1, 3.0 * max(-s, 0.0), bob))
    else:
        near, far = 28 * s, -28 * s
        pose.front_legs.append(_side_leg(near, 45 * max(c, 0.0), bob))
        pose.back_legs.append(_side_leg(far, 45 * max(-c, 0.0), bob))
        shoulder = (CX + 0.5, SHOULDER_Y + bob)
        pose.front_arms.append(_chain(shoulder, (-32 * s, -32 * s + 25), (UPPER_ARM, FOREARM)))
        pose.back_arms.append(_chain(shoulder, (32 * s, 32 * s + 25), (UPPER_ARM, FOREARM)))
    return pose


def _spellcast(view: str, t: int) -> _Pose:
    key = SPELL_FRAMES[t]
    glow = SPELL_GLOW[key]
    pose = _Pose(view)
    if view == "front":
        upper, fore = SPELL_FRONT[key]
        for side, shoulder in zip((-1, 1), _front_shoulders(0.0)):
            arm = _chain(shoulder, (upper, fore), (UPPER_ARM, FOREARM), facing=side)
            pose.front_arms.append(arm)
            if glow > 0:
                d = arm[2] - arm[1]
                pose.glows.append((arm[2] + 0.35 * d, glow))
        pose.front_legs.append(_front_leg(-1, 0.0, 0.0))
        pose.front_legs.append(_front_leg(1, 0.0, 0.0))
    else:
        upper, fore = SPELL_SIDE[key]
        shoulder = (CX + 0.5, SHOULDER_Y)
        near = _chain(shoulder, (upper, fore), (UPPER_ARM, FOREARM))
        far = _chain(shoulder, (max(upper - 18, 0), max(fore - 18, 0)), (UPPER_ARM, FOREARM))
        pose.front_arms.append(near)
        pose.back_arms.append(far)
        if glow > 0:
            d = near[2] - near[1]
            pose.glows.append((near[2] + 0.5 * d + np.array([-1.5, 0.0]), glow + 0.6))
        pose.front_legs.append(_side_leg(6, 0, 0.0))
        pose.back_legs.append(_side_leg(-6, 0, 0.0))
    return pose


def _slash_arm(shoulder, angles, facing: int) -> tuple[list[np.ndarray], np.ndarray]:
    upper, fore, sword = angles
    arm = _chain(shoulder, (upper, fore), (UPPER_ARM, FOREARM), facing=facing)
    return arm, _direction(sword, facing)


def _slash(view: str, t: int) -> _Pose:
    key = SLASH_FRAMES[t]
    pose = _Pose(view)
    if view == "front":
        left, right = _front_shoulders(0.0)
        keys, facing, shoulder = SLASH_FRONT, -1, left
        pose.front_arms.append(_chain(right, (12, 18), (UPPER_ARM, FOREARM), facing=1))
        pose.front_legs.append(_front_leg(-1, 0.0, 0.0))
        pose.front_legs.append(_front_leg(1, 0.0, 0.0))
    else:
        keys, facing, shoulder = SLASH_SIDE, -1, (CX + 0.5, SHOULDER_Y)
        near, far = SLASH_LEGS[key]
        pose.front_legs.append(_side_leg(near, 0, 0.0))
        pose.back_legs.append(_side_leg(far, 10 if far < 0 else 0, 0.0))
        pose.back_arms.append(_chain(shoulder, (-15, 0), (UPPER_ARM, FOREARM)))
    arm, sword = _slash_arm(shoulder, keys[key], facing)
    pose.front_arms.append(arm)
    pose.sword = (arm[2], sword)
    if key in (3, 4):
        # motion trail: the sword tip swept from the previous pose to this one
        a0 = np.asarray(keys[key - 1], dtype=np.float64)
        a1 = np.asarray(keys[key], dtype=np.float64)
        for w in np.linspace(0.0, 0.85, 40):
            up, fo, sw = (1 - w) * a0 + w * a1
            hand = _chain(shoulder, (up, fo), (UPPER_ARM, FOREARM), facing=facing)[2]
            pose.trail.append(hand + SWORD_LEN * _direction(sw, facing))
    return pose


_ACTIONS = {"walk": _walk, "spellcast": _spellcast, "slash": _slash}

# ---------------------------------------------------------------------------------
# Part masks of a pose.
# ---------------------------------------------------------------------------------


def _hair_masks(view: str, head) -> dict[str, np.ndarray]:
    """Back and front hair masks of every hair style for a head centred at ``head``."""
    hx, hy = head
    dx, dy = _XX - hx, _YY - hy
    big = (dx / 7.4) ** 2 + (dy / 7.3) ** 2 <= 1.0
    wide = (dx / 8.0) ** 2 + (dy / 7.6) ** 2 <= 1.0
    empty = np.zeros_like(big)
    out: dict[str, np.ndarray] = {}
    if view == "front":
        cap = big & (dy <= -2.5)
        fringe = big & (dy <= -1.5) & (np.abs(dx) <= 4) & ((np.floor(dx) % 3) != 0)
        short = cap | fringe | (big & (np.abs(dx) >= 5.5) & (dy <= 1.5))
        spikes = empty.copy()
        for k in (-5.0, -2.5, 0.0, 2.5, 5.0):
            tip = (hx + 1.3 * k, hy - 11.5 + 0.15 * abs(k))
            spikes |= _polygon([(hx + k - 2.2, hy - 5.5), (hx + k + 2.2, hy - 5.5), tip])
        spiky = cap | spikes | (big & (dy <= 0) & (np.abs(dx) >= 5.5))
        spiky |= big & (dy <= -1) & (np.abs(dx) <= 4.5) & (np.abs((dx + 4.5) % 3 - 1.5) <= (dy + 1) * 0.9 + 1.5)
        long_back = _rect(hx - 8, hx + 8, hy - 3, hy + 12) | _ellipse((hx, hy + 12), 8.0, 2.5)
        locks = _rect(hx - 8, hx - 5.5, hy - 3, hy + 10) | _rect(hx + 5.5, hx + 8, hy - 3, hy + 10)
        long_front = cap | (big & (dy <= -1.5)) | locks
        tails = _union(_capsule((hx + k * 8.0, hy - 1), (hx + k * 10.0, hy + 8), 1.5)
                       | _ellipse((hx + k * 7.5, hy - 2.0), 1.5, 1.5) for k in (-1, 1))
        bob = (wide & (dy <= -2)) | (wide & (np.abs(dx) >= 4.5) & (dy <= 4.5))
        mohawk = _ellipse((hx, hy - 7.5), 1.9, 5.0) | (big & (dy <= -5) & (np.abs(dx) <= 1.5))
        styles = [
            (empty, short),
            (empty, spiky),
            (long_back, long_front),
            (empty, short | tails),
            (empty, bob),
            (empty, mohawk),
        ]
    else:
        back = dx >= -0.5
        cap = big & ((dy <= -2.5) | (back & (dy <= 2.5)))
        short = cap | (big & (dy <= -1.5) & (dx <= -3))
        spikes = empty.copy()
        for k in (-4.0, -1.0, 2.0, 5.0):
            spikes |= _polygon([(hx + k - 2.4, hy - 5.0 + 0.3 * k), (hx + k + 2.2, hy - 5.0 + 0.3 * k),
                                (hx + k + 3.5, hy - 11.0 + 0.5 * k)])
        spiky = cap | spikes | _polygon([(hx + 5.5, hy - 3), (hx + 9.5, hy - 1), (hx + 6, hy + 1)])
        long_front = cap | (_rect(hx - 0.5, hx + 7.5, hy - 3, hy + 12) & ~((dx > 4) & (dy > 10))) | (big & (dy <= -1.5))
        tail = _capsule((hx + 7, hy - 2), (hx + 9.5, hy + 7), 1.8)
        bob = (wide & (dy <= -2)) | (wide & (dx >= -1.5) & (dy <= 4.5))
        mohawk = _ellipse((hx + 1.0, hy - 1.0), 5.5, 10.5) & ~_ellipse((hx + 1.0, hy + 0.5), 5.5, 7.0)
        mohawk &= (dy <= -4) | (dx >= 4)
        styles = [
            (empty, short),
            (empty, spiky),
            (empty, long_front),
            (empty, short | tail),
            (empty, bob),
            (empty, mohawk),
        ]
    for i, (b, f) in enumerate(styles):
        out[f"hair_back_{i}"] = b
        out[f"hair_front_{i}"] = f
    return out


def _limb_masks(chain: list[np.ndarray], radius: float) -> tuple[np.ndarray, np.ndarray]:
    return _capsule(chain[0], chain[1], radius), _capsule(chain[1], chain[2], radius)


def _union(masks) -> np.ndarray:
    out = np.zeros(_XX.shape, dtype=bool)
    for m in masks:
        out |= m
    return out


def _shoe(view: str, leg: list[np.ndarray]) -> np.ndarray:
    ankle = leg[2]
    if view == "front":
        return _ellipse((ankle[0], ankle[1] + 1.6), 2.6, 1.7)
    return _capsule((ankle[0] + 0.8, ankle[1] + 1.2), (ankle[0] - 2.6, ankle[1] + 1.4), 1.4)


def _part_masks(pose: _Pose) -> dict[str, np.ndarray]:
    """Boolean masks of every part (and every style variant) of one pose."""
    view, (hx, hy), bob = pose.view, pose.head, pose.bob
    m: dict[str, np.ndarray] = {}
    front = view == "front"
    # torso and hips
    if front:
        x0, x1 = CX - 5.5, CX + 5.5
        corners = _rect(0, x0 + 0.5, 0, 27.5 + bob) | _rect(x1 - 0.5, SIZE, 0, 27.5 + bob)
        torso = _rect(x0, x1, 27 + bob, 38 + bob) & ~corners
        torso |= _capsule((CX - 5.0, 28.5 + bob), (CX + 5.0, 28.5 + bob), 1.6)
        pelvis = _rect(x0, x1, 37 + bob, HIP_Y + 0.5 + bob)
        skirt = _polygon([(x0 - 0.5, 37 + bob), (x1 + 0.5, 37 + bob), (x1 + 3.0, 46.6 + bob), (x0 - 3.0, 46.6 + bob)])
        hem = _polygon([(x0 - 0.5, 37 + bob), (x1 + 0.5, 37 + bob), (x1 + 1.2, 42.6 + bob), (x0 - 1.2, 42.6 + bob)])
        straps = _rect(x0, x0 + 1, 27 + bob, 27.5 + bob) | _rect(x1 - 1, x1, 27 + bob, 27.5 + bob)
        scoop = _ellipse((CX, 26.5 + bob), 3.2, 2.4) | straps
        opening = _polygon([(CX - 2.5, 27 + bob), (CX + 2.5, 27 + bob), (CX + 0.6, 38.5 + bob), (CX - 0.6, 38.5 + bob)])
        neck = _rect(CX - 2, CX + 2, 25 + bob, 28 + bob)
    else:
        x0, x1 = CX - 4.0, CX + 4.0
        torso = _rect(x0, x1, 27 + bob, 38 + bob) | _capsule((x0 + 1, 29 + bob), (x0 + 1, 33 + bob), 1.6)
        pelvis = _rect(x0, x1, 37 + bob, HIP_Y + 0.5 + bob)
        skirt = _polygon([(x0 - 0.5, 37 + bob), (x1 + 0.5, 37 + bob), (x1 + 2.5, 46.6 + bob), (x0 - 3.5, 46.6 + bob)])
        hem = _polygon([(x0 - 0.5, 37 + bob), (x1 + 0.5, 37 + bob), (x1 + 1.2, 42.6 + bob), (x0 - 1.6, 42.6 + bob)])
        scoop = _ellipse((x0 + 0.5, 26.5 + bob), 2.5, 2.4)
        opening = _rect(x0 - 1, x0 + 0.5, 27 + bob, 38.5 + bob)
        neck = _rect(CX - 1.5, CX + 2.5, 25 + bob, 28 + bob)
    m["torso"] = torso
    m["pelvis"] = pelvis
    m["skirt"] = skirt
    m["hem"] = hem
    m["belt"] = torso & (_YY >= 36.5 + bob) & (_YY <= 37.5 + bob) | (hem & (_YY <= 37.5 + bob))
    m["stripes"] = torso & (((_YY - bob - 27).astype(int) % 3) == 2) & (_YY < 37 + bob)
    m["scoop"] = scoop & torso
    m["opening"] = opening & torso
    m["neck"] = neck
    # head and face
    if front:
        m["head"] = _ellipse((hx, hy), 6.6, 6.4)
        m["eyes"] = _rect(hx - 3.6, hx - 2.4, hy + 0.5, hy + 2.5) | _rect(hx + 2.4, hx + 3.6, hy + 0.5, hy + 2.5)
        m["ears"] = (_polygon([(hx - 5.5, hy - 0.5), (hx - 10.5, hy - 3.5), (hx - 5.5, hy + 3)])
                     | _polygon([(hx + 5.5, hy - 0.5), (hx + 10.5, hy - 3.5), (hx + 5.5, hy + 3)]))
    else:
        m["head"] = _ellipse((hx, hy), 6.2, 6.4) | _rect(hx - 7, hx - 6, hy + 1.5, hy + 2.5)
        m["eyes"] = _rect(hx - 4.6, hx - 3.4, hy + 0.5, hy + 2.5)
        m["ears"] = _polygon([(hx + 0.5, hy - 0.5), (hx + 6.5, hy - 5.5), (hx + 2.5, hy + 3)])
    m.update(_hair_masks(view, (hx, hy)))
    # limbs
    for depth, arms, legs in (("back", pose.back_arms, pose.back_legs), ("front", pose.front_arms, pose.front_legs)):
        uppers, fores, hands = [], [], []
        for arm in arms:
            u, f = _limb_masks(arm, ARM_R)
            uppers.append(u)
            fores.append(f)
            hands.append(_ellipse(arm[2], 1.8, 1.8))
        m[f"{depth}_upper_arm"] = _union(uppers)
        m[f"{depth}_forearm"] = _union(fores) & ~m[f"{depth}_upper_arm"]
        m[f"{depth}_hand"] = _union(hands)
        thighs, shins, shoes = [], [], []
        for leg in legs:
            th, sh = _limb_masks(leg, LEG_R)
            thighs.append(th)
            shins.append(sh)
            shoes.append(_shoe(view, leg))
        m[f"{depth}_thigh"] = _union(thighs)
        m[f"{depth}_shin"] = _union(shins) & ~m[f"{depth}_thigh"]
        m[f"{depth}_shoe"] = _union(shoes)
    # props of the motions
    blade = hilt = np.zeros_like(torso)
    if pose.sword is not None:
        hand, d = pose.sword
        perp = np.array([-d[1], d[0]])
        tip = hand + SWORD_LEN * d
        blade = _capsule(hand + 2.0 * d, tip, 0.9) | _capsule(tip, tip + 1.2 * d, 0.5)
        guard = _capsule(hand + 1.6 * d - 2.2 * perp, hand + 1.6 * d + 2.2 * perp, 0.8)
        hilt = guard | _capsule(hand - 1.0 * d, hand + 1.0 * d, 0.7)
    m["blade"] = blade
    m["hilt"] = hilt
    m["glow"] = _union(_ellipse(c, r + 0.4, r + 0.4) for c, r in pose.glows)
    m["glow_core"] = _union(_ellipse(c, max(r - 1.1, 0.6), max(r - 1.1, 0.6)) for c, r in pose.glows)
    m["trail"] = _union(_ellipse(p, 0.8, 0.8) for p in pose.trail)
    return m


@functools.lru_cache(maxsize=1)
def _all_part_masks() -> dict[str, np.ndarray]:
    """Part masks stacked over (action, view, frame): each (3, 2, 8, 64, 64) bool."""
    frames = []
    for action in schema.ACTIONS:
        for view in VIEWS:
            for t in range(FRAMES):
                frames.append(_part_masks(_ACTIONS[action](view, t)))
    shape = (len(schema.ACTIONS), len(VIEWS), FRAMES, SIZE, SIZE)
    return {k: np.stack([f[k] for f in frames]).reshape(shape) for k in frames[0]}


# ---------------------------------------------------------------------------------
# Label maps of a style combination.
# ---------------------------------------------------------------------------------


def _compose(body_style: int, bottom_style: int, top_style: int, hair_style: int) -> np.ndarray:
    """Label maps (3 actions, 2 views, 8, 64, 64) uint8 of one style combination."""
    p = _all_part_masks()
    lab = np.zeros(p["torso"].shape, dtype=np.uint8)

    def paint(mask: np.ndarray, label: int) -> None:
        np.copyto(lab, np.uint8(label), where=mask)

    long_pants, skirt = bottom_style == 0, bottom_style == 2
    sleeves = {0: "short", 1: "long", 2: "none", 3: "short", 4: "long", 5: "none"}[top_style]
    paint(p["trail"], TRAIL)
    paint(p[f"hair_back_{hair_style}"], HAIR_SHADE)
    for depth in ("back", "front"):
        shade = depth == "back"
        skin, top, pants = (SKIN_SHADE, TOP_SHADE, PANTS_SHADE) if shade else (SKIN, TOP, PANTS)
        if depth == "front":
            # the far arm is behind the body, the near arms in front: paint legs and torso in between
            paint(p["front_thigh"], pants if not skirt else skin)
            paint(p["front_shin"], pants if long_pants else skin)
            paint(p["front_shoe"], SHOE)
            paint(p["pelvis"], PANTS)
            if skirt:
                paint(p["skirt"], PANTS)
            paint(p["neck"], SKIN)
            paint(p["torso"], TOP)
            if top_style == 2:
                paint(p["scoop"], SKIN)
            elif top_style == 3:
                paint(p["stripes"], TOP_ACCENT)
            elif top_style == 4:
                paint(p["hem"], TOP)
                paint(p["belt"], TOP_ACCENT)
            elif top_style == 5:
                paint(p["opening"], TOP_ACCENT)
            paint(p["head"], SKIN)
            paint(p["eyes"], EYE)
            paint(p[f"hair_front_{hair_style}"], HAIR)
            if body_style == 1:
                paint(p["ears"], SKIN)
        else:
            paint(p["back_thigh"], pants if not skirt else skin)
            paint(p["back_shin"], pants if long_pants else skin)
            paint(p["back_shoe"], SHOE_SHADE)
        paint(p[f"{depth}_upper_arm"], top if sleeves != "none" else skin)
        paint(p[f"{depth}_forearm"], top if sleeves == "long" else skin)
        if depth == "front":
            paint(p["blade"], BLADE)
            paint(p["hilt"], HILT)
        paint(p[f"{depth}_hand"], skin)
    paint(p["glow"], GLOW)
    paint(p["glow_core"], GLOW_CORE)
    return lab


@functools.lru_cache(maxsize=None)
def _label_maps(styles: tuple[int, int, int, int]) -> np.ndarray:
    """Label maps (9 motions, 8, 64, 64) uint8 of a style combination (read-only, cached)."""
    lab = _compose(*styles)
    out = np.empty((schema.N_MOTIONS, FRAMES, SIZE, SIZE), dtype=np.uint8)
    for a in range(len(schema.ACTIONS)):
        out[schema.motion_label(a, 0)] = lab[a, 0]
        out[schema.motion_label(a, 1)] = lab[a, 1]
        out[schema.motion_label(a, 2)] = lab[a, 1, :, :, ::-1]  # facing right = mirror of facing left
    out.setflags(write=False)
    return out


def _styles(attributes) -> tuple[int, int, int, int]:
    b, p, t, h = (int(v) for v in attributes)
    return BODY_STYLES[b], BOTTOM_STYLES[p], TOP_STYLES[t], HAIR_STYLES[h]


def _check_attributes(attributes) -> np.ndarray:
    a = np.asarray(attributes, dtype=np.int64)
    if a.shape[-1:] != (len(schema.FACTORS),) or a.size and (a.min() < 0 or a.max() >= schema.N_VALUES):
        raise ValueError(f"attributes must be rows of {len(schema.FACTORS)} values in "
                         f"0..{schema.N_VALUES - 1}, got {a.tolist()}")
    return a


def _shade(colour) -> tuple[int, int, int]:
    return tuple(int(round(c * SHADE)) for c in colour)


def palette(attributes) -> np.ndarray:
    """Colour of every part label (N_LABELS, 3) uint8 for attributes [body, bottom, top, hair]."""
    b, p, t, h = (int(v) for v in _check_attributes(attributes))
    pal = np.zeros((N_LABELS, 3), dtype=np.uint8)
    pal[SKIN], pal[SKIN_SHADE] = BODY_COLOURS[b], _shade(BODY_COLOURS[b])
    pal[EYE] = EYE_COLOUR
    pal[TOP], pal[TOP_SHADE], pal[TOP_ACCENT] = TOP_COLOURS[t], _shade(TOP_COLOURS[t]), TOP_ACCENTS[t]
    pal[PANTS], pal[PANTS_SHADE] = BOTTOM_COLOURS[p], _shade(BOTTOM_COLOURS[p])
    pal[HAIR], pal[HAIR_SHADE] = HAIR_COLOURS[h], _shade(HAIR_COLOURS[h])
    pal[SHOE], pal[SHOE_SHADE] = SHOE_COLOUR, _shade(SHOE_COLOUR)
    pal[BLADE], pal[HILT] = BLADE_COLOUR, HILT_COLOUR
    pal[GLOW], pal[GLOW_CORE], pal[TRAIL] = GLOW_COLOUR, GLOW_CORE_COLOUR, TRAIL_COLOUR
    return pal


def render_labels(attributes, motion: int | None = None) -> np.ndarray:
    """Part label maps of one character: (8, 64, 64) uint8 for a motion, (9, 8, 64, 64) for all."""
    maps = _label_maps(_styles(_check_attributes(attributes)))
    return maps if motion is None else maps[_check_motion(motion)]


def _check_motion(motion: int) -> int:
    if not 0 <= int(motion) < schema.N_MOTIONS:
        raise ValueError(f"motion must be in 0..{schema.N_MOTIONS - 1}, got {motion}")
    return int(motion)


def render_character(attributes, motion: int | None = None) -> np.ndarray:
    """Frames of one character [body, bottom, top, hair]: uint8 (8, 64, 64, 3) for one motion
    (0..8 = 3 * action + direction), or (9, 8, 64, 64, 3) for all nine."""
    return palette(attributes)[render_labels(attributes, motion)]


def render_characters(attributes) -> np.ndarray:
    """All nine motions of several characters: uint8 (N, 9, 8, 64, 64, 3) for attribute rows (N, 4)."""
    rows = _check_attributes(np.atleast_2d(attributes))
    out = np.empty((len(rows), schema.N_MOTIONS, FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    for i, row in enumerate(rows):
        np.take(palette(row), _label_maps(_styles(row)), axis=0, out=out[i])
    return out


def render_sequences(attributes, actions) -> np.ndarray:
    """Sequences of (character, motion) pairs: uint8 (N, 8, 64, 64, 3)."""
    rows = _check_attributes(np.atleast_2d(attributes))
    actions = np.asarray(actions, dtype=np.int64).reshape(-1)
    if len(actions) != len(rows):
        raise ValueError(f"got {len(rows)} attribute rows but {len(actions)} motions")
    out = np.empty((len(rows), FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    for i, (row, m) in enumerate(zip(rows, actions)):
        np.take(palette(row), _label_maps(_styles(row))[_check_motion(m)], axis=0, out=out[i])
    return out


def factor_colours() -> dict[str, tuple[tuple[int, int, int], ...]]:
    """The main colour of each value of each factor."""
    return {"body": BODY_COLOURS, "bottom": BOTTOM_COLOURS, "top": TOP_COLOURS, "hair": HAIR_COLOURS}


# ---------------------------------------------------------------------------------
# Building the data set file.
# ---------------------------------------------------------------------------------
_CHARS_PER_WRITE = 32


def build_procedural(out: str | os.PathLike, seed: int = 0, overwrite: bool = False, progress: bool = True) -> Path:
    """Write the procedural sprites data set to ``out`` (dsvae HDF5 schema, source "procedural").

    All 6^4 = 1,296 characters x 9 motions x 8 frames of 64 x 64 RGB. The
    characters are split 1,000 train / 296 test by ``np.random.RandomState(seed)``;
    the pixels do not depend on the seed. The same seed gives the same data.
    """
    seed = int(seed)
    train_ids, test_ids = schema.standard_split(seed=seed, n_train=schema.N_TRAIN_CHARACTERS)
    labels = {"train": schema.sequence_labels(train_ids), "test": schema.sequence_labels(test_ids)}
    attrs = schema.default_attrs(
        "procedural", FACTOR_VALUES,
        seed=seed, generator_version=GENERATOR_VERSION,
        split=f"np.random.RandomState({seed}).permutation({schema.N_CHARACTERS}): first "
              f"{schema.N_TRAIN_CHARACTERS} train",
        styles={"bottom": [BOTTOM_STYLE_NAMES[s] for s in BOTTOM_STYLES],
                "top": [TOP_STYLE_NAMES[s] for s in TOP_STYLES],
                "hair": [HAIR_STYLE_NAMES[s] for s in HAIR_STYLES]},
    )
    bar = tqdm(total=schema.N_CHARACTERS, desc="drawing sprites", unit="char", disable=not progress)
    try:
        with schema.DatasetWriter(out, labels, attrs, overwrite=overwrite) as writer:
            for split, ids in (("train", train_ids), ("test", test_ids)):
                for start in range(0, len(ids), _CHARS_PER_WRITE):
                    chunk = ids[start:start + _CHARS_PER_WRITE]
                    videos = render_characters(schema.character_attributes(chunk))
                    writer.write(split, start * schema.N_MOTIONS, videos.reshape((-1,) + videos.shape[2:]))
                    bar.update(len(chunk))
    finally:
        bar.close()
        _label_maps.cache_clear()  # ~64 MB of label maps for all 216 style combinations
    return writer.path
