"""Visual randomisation of rendered scenes: lights, camera poses, surface colours and image noise.

A :class:`Randomization` holds the bounds (everything off by default, so a default rig renders
byte-identical frames); :func:`draw_look` draws one episode's :class:`Look` from it and an integer
seed, deterministically; a :class:`LookApplier` puts a look on a rig's RENDER model and scene.

Where each part is applied, and why:
- light intensity and colour, and surface colours: written to the render model (``light_*``,
  ``vis.headlight``, ``geom_rgba``), always from the values captured when the applier was built, so
  looks never accumulate. None of these fields enters MuJoCo's dynamics.
- light direction and camera pose: MuJoCo's renderer takes them from ``MjData`` (the kinematics the
  physics computes), so editing the model's ``cam_pos`` or ``light_dir`` would do nothing without
  touching the physics. They are edited in the ``mjvScene`` after each ``update_scene`` instead.
- noise: added to each rendered frame from the look's own seeded stream.
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # mujoco itself is imported by sim.rendering, after it chose the GL backend
    import mujoco

# Which colour parts exist: the Meta-World scene's top-level bodies by name; everything else visible
# under the world body is an object of the task ("objects" selects them all).
COLOUR_PARTS = ("floor", "table", "wall", "objects", "robot")
_PART_OF_BODY = {"tablelink": "table", "RetainingWall": "wall", "base": "robot", "mocap": None}
_DEFAULT_RGBA = np.array([0.5, 0.5, 0.5, 1.0], np.float32)  # MuJoCo: this geom rgba means "use the material's"
_VISIBLE_GROUPS = 3  # mujoco.Renderer draws geom groups 0-2
# Independent random streams per drawn quantity, so turning one on never moves another's draw.
_STREAM = {"light": 1, "light_dir": 2, "camera": 3, "colour": 4, "noise": 5}


class RandomizeConfigError(ValueError):
    """A randomisation setting that cannot be used; the message names the key and the fix."""


# key -> (identity range, lowest allowed, highest allowed, unit/meaning)
_RANGES: dict[str, tuple[tuple[float, float], float, float, str]] = {
    "light_scale": ((1.0, 1.0), 0.0, 5.0, "factor on diffuse/ambient/specular of every light and the headlight"),
    "light_tint": ((0.0, 0.0), -1.0, 1.0, "offset of each light colour channel's factor (1 + u)"),
    "light_dir_deg": ((0.0, 0.0), -90.0, 90.0, "yaw and pitch of each model light's direction, degrees"),
    "camera_pos_m": ((0.0, 0.0), -0.5, 0.5, "camera position offset per world axis, metres"),
    "camera_rot_deg": ((0.0, 0.0), -45.0, 45.0, "camera rotation per camera axis, degrees"),
    "colour_hue_deg": ((0.0, 0.0), -180.0, 180.0, "hue shift of each colour part, degrees"),
    "colour_brightness": ((1.0, 1.0), 0.0, 3.0, "brightness (HSV value) factor of each colour part"),
    "noise_std": ((0.0, 0.0), 0.0, 64.0, "std of Gaussian pixel noise, uint8 units"),
}


@dataclass(frozen=True)
class Randomization:
    """Bounds of the visual randomisation; every range is ``(low, high)``, drawn uniformly per episode.

    A range with ``low == high`` is a fixed value (e.g. ``light_scale=(0.6, 0.6)`` for a robustness
    test). The defaults are the identity: nothing changes and frames are byte-identical to a rig
    without randomisation. See :func:`from_config` for the accepted config form.

    Attributes:
        light_scale: factor on the diffuse, ambient and specular colour of every model light and the
            headlight.
        light_tint: per colour channel, the light colour is multiplied by ``1 + u``, ``u`` in this range.
        light_dir_deg: each model light's direction turns by a yaw (about world z) and a pitch, degrees.
        camera_pos_m: each camera moves by an offset per world axis, metres.
        camera_rot_deg: each camera turns by a rotation vector whose camera-frame components lie in
            this range, degrees.
        colour_hue_deg: hue shift of each colour part (white/grey textured surfaces have no hue and
            change brightness only), degrees.
        colour_brightness: factor on the HSV value of each colour part (clipped to 1).
        colour_parts: which parts change colour: some of ``floor``, ``table``, ``wall``, ``objects``
            (every task object) and ``robot`` (the arm, only when listed).
        noise_std: std of Gaussian noise added to every frame, in uint8 units.
    """

    light_scale: tuple[float, float] = (1.0, 1.0)
    light_tint: tuple[float, float] = (0.0, 0.0)
    light_dir_deg: tuple[float, float] = (0.0, 0.0)
    camera_pos_m: tuple[float, float] = (0.0, 0.0)
    camera_rot_deg: tuple[float, float] = (0.0, 0.0)
    colour_hue_deg: tuple[float, float] = (0.0, 0.0)
    colour_brightness: tuple[float, float] = (1.0, 1.0)
    colour_parts: tuple[str, ...] = ("floor", "table", "wall", "objects")
    noise_std: tuple[float, float] = (0.0, 0.0)

    @property
    def enabled(self) -> bool:
        """Whether any range differs from the identity (off: no look is drawn at all)."""
        return any(tuple(getattr(self, k)) != ident for k, (ident, *_) in _RANGES.items())

    def as_dict(self) -> dict:
        """JSON-serialisable form (lists), as :func:`from_config` reads it back."""
        return {k: list(v) for k, v in asdict(self).items()}


def _as_range(key: str, value) -> tuple[float, float]:
    """A number (a fixed value) or ``[low, high]`` as a float pair, checked against the key's limits."""
    ident, lowest, highest, meaning = _RANGES[key]
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        pair = (float(value), float(value))
    elif not isinstance(value, (str, bytes, Mapping)) and hasattr(value, "__iter__"):
        items = list(value)
        if len(items) != 2 or not all(isinstance(v, (int, float, np.integer, np.floating))
                                      and not isinstance(v, bool) for v in items):
            raise RandomizeConfigError(f"randomize.{key}={items!r}: give [low, high] (two numbers) or one number")
        pair = (float(items[0]), float(items[1]))
    else:
        raise RandomizeConfigError(f"randomize.{key}={value!r}: give [low, high] (two numbers) or one number "
                                   f"({meaning}; off is {list(ident)})")
    if not all(np.isfinite(pair)):
        raise RandomizeConfigError(f"randomize.{key}={list(pair)} is not finite: use finite numbers")
    if pair[0] > pair[1]:
        raise RandomizeConfigError(f"randomize.{key}={list(pair)} has low > high: write it as {[pair[1], pair[0]]}")
    if pair[0] < lowest or pair[1] > highest:
        hint = " (a std cannot be negative)" if key == "noise_std" else ""
        raise RandomizeConfigError(f"randomize.{key}={list(pair)} out of bounds{hint}: keep it within "
                                   f"[{lowest}, {highest}] ({meaning})")
    return pair


def from_config(config: Randomization | Mapping | None) -> Randomization:
    """A checked :class:`Randomization` from a mapping (e.g. the ``randomize`` Hydra group), or off for None.

    Keys are the attributes of :class:`Randomization`; each range is ``[low, high]`` or one number
    (a fixed value). Missing keys stay off.

    Raises:
        RandomizeConfigError: an unknown key (naming the known ones), a range with low > high, a
            negative std or a value out of bounds, each naming the key and the fix.
    """
    if config is None:
        return Randomization()
    if isinstance(config, Randomization):
        return from_config(config.as_dict())
    if not isinstance(config, Mapping):
        raise RandomizeConfigError(f"randomize must be a mapping of bounds (or None for off), got {config!r}")
    known = [f.name for f in fields(Randomization)]
    unknown = sorted(str(k) for k in config if k not in known)
    if unknown:
        raise RandomizeConfigError(f"unknown randomize key(s) {unknown}: use some of {known}")
    values = {}
    for key, value in config.items():
        if key == "colour_parts":
            parts = [value] if isinstance(value, str) else list(value)
            bad = [p for p in parts if p not in COLOUR_PARTS]
            if bad:
                raise RandomizeConfigError(f"randomize.colour_parts has {bad}: use some of {list(COLOUR_PARTS)}")
            values[key] = tuple(str(p) for p in parts)
        else:
            values[key] = _as_range(key, value)
    return Randomization(**values)


@dataclass(frozen=True)
class LookTargets:
    """What a look is drawn for: a rig's cameras, the model's light count and its colour parts."""

    cameras: tuple[str, ...]
    nlight: int
    parts: tuple[str, ...]  # floor, table, wall, robot, object/<body>


@dataclass(frozen=True)
class Look:
    """The drawn values of one episode (identity where a range is off).

    Attributes:
        light_scale: factor on every light's (and the headlight's) diffuse, ambient and specular.
        light_tint: RGB factors on the light colours.
        light_dir_deg: per model light, ``(yaw, pitch)`` of its direction, degrees.
        cameras: camera -> ``{"pos_m": [dx, dy, dz] (world), "rot_deg": [rx, ry, rz] (camera frame)}``.
        colours: colour part -> ``[hue shift (deg), brightness factor]``.
        noise_std: std of the pixel noise, uint8 units.
        noise_seed: seed of the noise stream (restarted whenever the look is applied).
    """

    light_scale: float = 1.0
    light_tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    light_dir_deg: tuple[tuple[float, float], ...] = ()
    cameras: dict = field(default_factory=dict)
    colours: dict = field(default_factory=dict)
    noise_std: float = 0.0
    noise_seed: int = 0

    def to_dict(self) -> dict:
        """JSON-serialisable form (lists and floats), as stored per episode."""
        return {
            "light_scale": float(self.light_scale),
            "light_tint": [float(v) for v in self.light_tint],
            "light_dir_deg": [[float(a), float(b)] for a, b in self.light_dir_deg],
            "cameras": {c: {k: [float(x) for x in v] for k, v in d.items()} for c, d in self.cameras.items()},
            "colours": {p: [float(x) for x in v] for p, v in self.colours.items()},
            "noise_std": float(self.noise_std),
            "noise_seed": int(self.noise_seed),
        }

    @classmethod
    def from_dict(cls, values: Mapping) -> "Look":
        """The look of :meth:`to_dict`'s output (e.g. ``json.loads`` of a stored episode's ``look``)."""
        return cls(
            light_scale=float(values["light_scale"]),
            light_tint=tuple(float(v) for v in values["light_tint"]),
            light_dir_deg=tuple((float(a), float(b)) for a, b in values["light_dir_deg"]),
            cameras={c: {k: [float(x) for x in v] for k, v in d.items()} for c, d in values["cameras"].items()},
            colours={p: [float(x) for x in v] for p, v in values["colours"].items()},
            noise_std=float(values["noise_std"]),
            noise_seed=int(values["noise_seed"]),
        )


def _stream(seed: Sequence[int], name: str, key: str = "") -> np.random.Generator:
    """The random stream of one drawn quantity (per camera / part by a stable hash of its name)."""
    return np.random.default_rng(np.random.SeedSequence([*seed, _STREAM[name], zlib.crc32(key.encode())]))


def draw_look(randomization: Randomization, seed: int | Sequence[int], targets: LookTargets) -> Look:
    """Draw one episode's look, deterministically: the same seed and targets give the same look.

    ``seed`` is a non-negative int or a sequence of them (``SimTask`` passes ``(randomize_seed,
    split, episode seed)``). Each camera and colour part has its own stream, so a camera's jitter does
    not depend on which other cameras the rig has.
    """
    seed = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    r = randomization
    light = _stream(seed, "light")
    scale = float(light.uniform(*r.light_scale))
    tint = tuple(float(1.0 + t) for t in light.uniform(*r.light_tint, size=3))
    dirs = _stream(seed, "light_dir").uniform(*r.light_dir_deg, size=(targets.nlight, 2))
    cameras = {}
    for cam in targets.cameras:
        g = _stream(seed, "camera", cam)
        cameras[cam] = {"pos_m": g.uniform(*r.camera_pos_m, size=3).tolist(),
                        "rot_deg": g.uniform(*r.camera_rot_deg, size=3).tolist()}
    chosen = [p for p in targets.parts if p in r.colour_parts or (p.startswith("object/") and "objects" in r.colour_parts)]
    colours = {}
    for part in chosen:
        g = _stream(seed, "colour", part)
        colours[part] = [float(g.uniform(*r.colour_hue_deg)), float(g.uniform(*r.colour_brightness))]
    noise = _stream(seed, "noise")
    return Look(scale, tint, tuple((float(a), float(b)) for a, b in dirs), cameras, colours,
                float(noise.uniform(*r.noise_std)), int(noise.integers(2**31)))


def _rotation(axis_angle: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of a rotation vector (radians)."""
    angle = float(np.linalg.norm(axis_angle))
    if angle == 0.0:
        return np.eye(3)
    k = axis_angle / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def _turn_light(direction: np.ndarray, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """A light direction turned by ``yaw`` about world z, then ``pitch`` about its horizontal normal."""
    d = _rotation(np.array([0.0, 0.0, np.radians(yaw_deg)])) @ direction
    side = np.cross(d, [0.0, 0.0, 1.0])
    side = side / np.linalg.norm(side) if np.linalg.norm(side) > 1e-6 else np.array([1.0, 0.0, 0.0])
    return _rotation(side * np.radians(pitch_deg)) @ d


def _shift_colour(rgba: np.ndarray, hue_deg: float, brightness: float) -> np.ndarray:
    """``rgba`` with its hue turned and its HSV value scaled (clipped to 1); alpha kept."""
    h, s, v = colorsys.rgb_to_hsv(*np.clip(rgba[:3], 0.0, 1.0))
    rgb = colorsys.hsv_to_rgb((h + hue_deg / 360.0) % 1.0, s, min(1.0, v * brightness))
    return np.array([*rgb, rgba[3]], np.float32)


class LookApplier:
    """Puts looks on one render model and its scene, always relative to the values at construction.

    Build it before anything edits the model's lights or colours (``CameraRig`` does, on first use).
    """

    def __init__(self, model: mujoco.MjModel, cameras: Sequence[str]) -> None:
        self.model = model
        self._light = (model.light_diffuse.copy(), model.light_ambient.copy(), model.light_specular.copy())
        head = model.vis.headlight
        self._headlight = (np.array(head.diffuse), np.array(head.ambient), np.array(head.specular))
        self._geom_rgba = model.geom_rgba.copy()
        self._active_lights = [i for i in range(model.nlight) if model.light_active[i]]
        self._parts: dict[str, list[int]] = {}
        for g in range(model.ngeom):
            base = self._base_colour(g)
            if model.geom_group[g] >= _VISIBLE_GROUPS or base[3] <= 0:
                continue  # never drawn: colliders, invisible helpers
            root = int(model.geom_bodyid[g])
            while root and model.body_parentid[root] != 0:
                root = int(model.body_parentid[root])
            name = model.body(root).name
            part = "floor" if root == 0 else _PART_OF_BODY.get(name, f"object/{name}")
            if part is not None:
                self._parts.setdefault(part, []).append(g)
        self.targets = LookTargets(tuple(cameras), len(self._active_lights), tuple(self._parts))
        self.look: Look | None = None
        self._noise: np.random.Generator | None = None
        self._camera_turns: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _base_colour(self, g: int) -> np.ndarray:
        """The colour geom ``g`` shows as built: its material's rgba unless its own rgba is set."""
        m = self.model
        if m.geom_matid[g] >= 0 and np.array_equal(self._geom_rgba[g], _DEFAULT_RGBA):
            return m.mat_rgba[m.geom_matid[g]].astype(np.float32)
        return self._geom_rgba[g].astype(np.float32)

    def apply(self, look: Look | None) -> None:
        """Write ``look`` into the render model (None restores the original values); restarts the noise."""
        m = self.model
        diffuse, ambient, specular = self._light
        tint = np.ones(3) if look is None else np.asarray(look.light_tint) * look.light_scale
        m.light_diffuse[:] = diffuse * tint
        m.light_ambient[:] = ambient * tint
        m.light_specular[:] = specular * tint
        head = m.vis.headlight
        for name, value in zip(("diffuse", "ambient", "specular"), self._headlight):
            getattr(head, name)[:] = value * tint
        m.geom_rgba[:] = self._geom_rgba
        self._camera_turns = {}
        self._noise = None
        self.look = look
        if look is None:
            return
        for part, (hue, brightness) in look.colours.items():
            for g in self._parts.get(part, ()):
                m.geom_rgba[g] = _shift_colour(self._base_colour(g), hue, brightness)
        for cam, offsets in look.cameras.items():
            if any(offsets["pos_m"]) or any(offsets["rot_deg"]):
                self._camera_turns[cam] = (np.asarray(offsets["pos_m"]), np.radians(offsets["rot_deg"]))
        if look.noise_std > 0:
            self._noise = np.random.default_rng(look.noise_seed)

    def edit_scene(self, scene: mujoco.MjvScene, camera: str) -> None:
        """Turn the scene's lights and move its camera (and headlight) by the look, after ``update_scene``."""
        if any(a or b for a, b in self.look.light_dir_deg):
            model_lights = [i for i in range(scene.nlight) if not scene.lights[i].headlight]
            for i, (yaw, pitch) in zip(model_lights, self.look.light_dir_deg):
                scene.lights[i].dir[:] = _turn_light(np.array(scene.lights[i].dir, np.float64), yaw, pitch)
        if camera not in self._camera_turns:
            return
        shift, rot = self._camera_turns[camera]
        eyes = scene.camera
        head = (np.array(eyes[0].pos, np.float64) + np.array(eyes[1].pos, np.float64)) / 2
        forward, up = np.array(eyes[0].forward, np.float64), np.array(eyes[0].up, np.float64)
        frame = np.stack([np.cross(forward, up), up, -forward], axis=1)  # camera x, y, z in world
        turn = _rotation(frame @ rot)
        for eye in eyes:
            eye.pos[:] = head + turn @ (np.array(eye.pos, np.float64) - head) + shift
            eye.forward[:] = turn @ np.array(eye.forward, np.float64)
            eye.up[:] = turn @ np.array(eye.up, np.float64)
        for i in range(scene.nlight):
            if scene.lights[i].headlight:  # the headlight sits on the camera: it moves along
                light = scene.lights[i]
                light.pos[:] = head + turn @ (np.array(light.pos, np.float64) - head) + shift
                light.dir[:] = turn @ np.array(light.dir, np.float64)

    def add_noise(self, image: np.ndarray) -> np.ndarray:
        """``image`` (uint8 (H, W, 3)) with the look's Gaussian noise, from its seeded stream."""
        if self._noise is None:
            return image
        noise = self._noise.standard_normal(image.shape, dtype=np.float32) * np.float32(self.look.noise_std)
        return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)
