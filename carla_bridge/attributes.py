"""Camera blueprint attributes as CARLA 0.9.16 defines them, parsed as CARLA parses them, and the
post-processing the neural camera applies for the ones with a clear image-space meaning.

The definitions follow the server's MakeCameraDefinition (ActorBlueprintFunctionLibrary.cpp):
every camera has role_name, sensor_tick, image_size_x/y, fov and the lens_* attributes; only
sensor.camera.rgb has the post-process ones (enable_postprocess_effects, gamma, exposure_*,
motion_blur_*, bloom_intensity, ...). Parsing follows LibCarla's ActorAttribute: a bool is
"true" / "false" in any case, an int or a float is a number (LibCarla's atoi / atof would read
garbage as 0; we refuse it by name instead), a float must fit a float32, exposure_mode is
restricted to its recommended values.

Modelled (an image-space formula, applied to the rgb camera's picture in this order):
    exposure_compensation  linear radiance (picture^2.2) x 2^(ec - default): CARLA's documented "-1: 2x darker,
                           +1: 2x brighter"; the blueprint's default leaves the picture unchanged
    gamma                  the picture is display-encoded for the default gamma (2.2): out = in^(default / gamma)
    lens_k, lens_kcube,    radial distortion about the image centre: a pixel at normalised radius r (1 at the
    lens_x_size,           image corner) samples the undistorted picture at r (1 + k (r sx)^2 + kcube |r sx|^3),
    lens_y_size            with sx, sy = lens_x_size, lens_y_size per axis (CARLA's shader does not document
                           its formula; at CARLA's defaults, a shift under 0.7% of the radius, nothing is resampled)
    lens_circle_falloff,   vignetting: out = in x (1 - min(multiplier / 10, 1) x r^falloff); both documented in
    lens_circle_multiplier [0, 10]: multiplier 0 (the default) is none, 10 a black corner; the leaderboard-1.0
                           cameras' 3 / 3 darken the corners by 30% (CARLA's shader is a binary material whose
                           formula is not published: this is our model of the documented ranges)
    chromatic_aberration_  red and blue sampled at r (1 +/- intensity x max(0, r - offset) x 0.01): fringes grow
    intensity / _offset    towards the corners beyond `offset` (intensity 0, the default, is none)
    enable_postprocess_    false turns every effect above off, as it does on CARLA's camera
    effects
Not modelled (warned once per attribute when set to a non-default value): motion blur, lens
flare, bloom, depth of field (focal_distance, blur_*, fstop, min_fstop, blade_count), the
histogram exposure parameters, shutter_speed / iso, the tonemapper (slope, toe, shoulder,
black_clip, white_clip), temp and tint. Depth, semantic and instance cameras ignore the lens
attributes, as CARLA's segmentation shaders are not distorted either (documented limitation).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from neural_sensor.camera import MAX_SIDE_PX

_log = logging.getLogger("carla_bridge")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class AttributeSpec:
    type: str  # "bool" | "int" | "float" | "string", as CARLA's ActorAttributeType
    default: str  # the blueprint's value before set_attribute
    choices: tuple[str, ...] = ()  # bRestrictToRecommended values, else empty


_COMMON = {
    "role_name": AttributeSpec("string", "front"),
    "sensor_tick": AttributeSpec("float", "0.0"),
    "image_size_x": AttributeSpec("int", "800"),
    "image_size_y": AttributeSpec("int", "600"),
    "fov": AttributeSpec("float", "90.0"),
    "lens_circle_falloff": AttributeSpec("float", "5.0"),
    "lens_circle_multiplier": AttributeSpec("float", "0.0"),
    "lens_k": AttributeSpec("float", "-1.0"),
    "lens_kcube": AttributeSpec("float", "0.0"),
    "lens_x_size": AttributeSpec("float", "0.08"),
    "lens_y_size": AttributeSpec("float", "0.08"),
}
_POSTPROCESS = {
    "exposure_mode": AttributeSpec("string", "histogram", ("manual", "histogram")),
    "exposure_compensation": AttributeSpec("float", "0.0"),
    "shutter_speed": AttributeSpec("float", "200.0"),
    "iso": AttributeSpec("float", "100.0"),
    "fstop": AttributeSpec("float", "1.4"),
    "enable_postprocess_effects": AttributeSpec("bool", "true"),
    "gamma": AttributeSpec("float", "2.2"),
    "motion_blur_intensity": AttributeSpec("float", "0.45"),
    "motion_blur_max_distortion": AttributeSpec("float", "0.35"),
    "motion_blur_min_object_screen_size": AttributeSpec("float", "0.1"),
    "lens_flare_intensity": AttributeSpec("float", "0.1"),
    "bloom_intensity": AttributeSpec("float", "0.675"),
    "exposure_min_bright": AttributeSpec("float", "10.0"),
    "exposure_max_bright": AttributeSpec("float", "12.0"),
    "exposure_speed_up": AttributeSpec("float", "3.0"),
    "exposure_speed_down": AttributeSpec("float", "1.0"),
    "calibration_constant": AttributeSpec("float", "16.0"),
    "focal_distance": AttributeSpec("float", "1000.0"),
    "min_fstop": AttributeSpec("float", "1.2"),
    "blade_count": AttributeSpec("int", "5"),
    "blur_amount": AttributeSpec("float", "1.0"),
    "blur_radius": AttributeSpec("float", "0.0"),
    "slope": AttributeSpec("float", "0.88"),
    "toe": AttributeSpec("float", "0.55"),
    "shoulder": AttributeSpec("float", "0.26"),
    "black_clip": AttributeSpec("float", "0.0"),
    "white_clip": AttributeSpec("float", "0.04"),
    "temp": AttributeSpec("float", "6500.0"),
    "tint": AttributeSpec("float", "0.0"),
    "chromatic_aberration_intensity": AttributeSpec("float", "0.0"),
    "chromatic_aberration_offset": AttributeSpec("float", "0.0"),
}
CAMERA_DEFINITIONS: dict[str, dict[str, AttributeSpec]] = {
    "sensor.camera.rgb": {**_COMMON, **_POSTPROCESS},
    "sensor.camera.depth": dict(_COMMON),
    "sensor.camera.semantic_segmentation": dict(_COMMON),
    "sensor.camera.instance_segmentation": dict(_COMMON),
}
MODELLED = frozenset({"role_name", "sensor_tick", "image_size_x", "image_size_y", "fov", "lens_circle_falloff",
                      "lens_circle_multiplier", "lens_k", "lens_kcube", "lens_x_size", "lens_y_size",
                      "enable_postprocess_effects", "gamma", "exposure_compensation",
                      "chromatic_aberration_intensity", "chromatic_aberration_offset"})
_warned: set[str] = set()


def check_camera_type(type_id: str) -> None:
    """ValueError naming the blueprint unless it is one of the four camera blueprints the neural sensor renders."""
    if type_id not in CAMERA_DEFINITIONS:
        raise ValueError(f"the neural sensor renders {sorted(CAMERA_DEFINITIONS)}; blueprint {type_id!r} is not "
                         "one of them (spawn it with world.spawn_actor)")


def parse_value(type_id: str, key: str, value) -> object:
    """One attribute's string as CARLA's ActorAttribute reads it: bool / int / float / str; ValueError by name."""
    spec = CAMERA_DEFINITIONS[type_id].get(key)
    if spec is None:
        raise ValueError(f"{type_id}: no attribute {key!r} (CARLA: attribute '{key}' not found)")
    text = str(value)
    if spec.type == "bool":
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise ValueError(f"{type_id}: {key}: invalid bool: {text!r} (true or false)")
        return lowered == "true"
    if spec.type == "int":
        try:
            return int(text.strip())
        except ValueError:
            try:  # a whole float ("800.0": the leaderboard's str() of a width given as 800.0), as CARLA's atoi reads it
                number = float(text.strip())
            except ValueError:
                number = math.nan
            if math.isfinite(number) and number.is_integer():
                return int(number)
            raise ValueError(f"{type_id}: {key}: {text!r} is not an integer") from None
    if spec.type == "float":
        try:
            number = float(text.strip())
        except ValueError:
            raise ValueError(f"{type_id}: {key}: {text!r} is not a number") from None
        if math.isnan(number):  # (libcarla keeps a NaN; nothing here can be drawn with one)
            raise ValueError(f"{type_id}: {key}: {text!r} is not a number the neural camera can use")
        if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
            raise ValueError(f"{type_id}: {key}: float overflow ({text!r})")
        if key == "gamma" and number <= 0.0:
            raise ValueError(f"{type_id}: gamma must be > 0, got {text!r}")
        return number
    if spec.choices and text not in spec.choices:
        raise ValueError(f"{type_id}: {key}: {text!r} is not one of {list(spec.choices)}")
    return text


@dataclass(frozen=True)
class CameraSettings:
    """Every attribute of one camera, parsed; `strings` holds them as CARLA's actor.attributes shows them."""

    type_id: str
    strings: dict  # every attribute as a string
    values: dict  # every known attribute parsed
    defaults: dict  # the blueprint's defaults, parsed: the reference picture of the post-processing model

    @property
    def width(self) -> int:
        return self.values["image_size_x"]

    @property
    def height(self) -> int:
        return self.values["image_size_y"]

    @property
    def fov_deg(self) -> float:
        return self.values["fov"]

    @property
    def sensor_tick_s(self) -> float:
        return self.values["sensor_tick"]

    @property
    def role_name(self) -> str:
        return self.values["role_name"]


def camera_settings(type_id: str, attributes: dict, strict: bool = True, defaults: dict | None = None) -> CameraSettings:
    """The definition's defaults overridden by `attributes` (values of any type, as strings), every value parsed
    and checked: image sizes positive, fov in (0, 180), sensor_tick >= 0. A key the definition lacks is refused by
    name when `strict` (a dict written by hand), else kept as a string and warned about once (a blueprint from a
    server may carry attributes this module does not know). `defaults`: the blueprint's own defaults (a server's
    recommended values) where they differ from this module's table."""
    check_camera_type(type_id)
    definition = dict(CAMERA_DEFINITIONS[type_id])
    for key, default in (defaults or {}).items():
        if key in definition:
            definition[key] = AttributeSpec(definition[key].type, str(default), definition[key].choices)
    strings = {key: spec.default for key, spec in definition.items()}
    for key, value in attributes.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        key = str(key)
        if key not in definition and strict:
            raise ValueError(f"{type_id}: no attribute {key!r} (CARLA: attribute '{key}' not found)")
        if key not in definition:
            if key not in _warned:
                _warned.add(key)
                _log.warning("neural camera: %s attribute %s=%s is not known here and not modelled (warned once)",
                             type_id, key, value)
        strings[key] = str(value)
    values = {key: parse_value(type_id, key, text) for key, text in strings.items() if key in definition}
    for key in ("image_size_x", "image_size_y"):
        if values[key] <= 0:
            raise ValueError(f"{type_id}: {key} must be a positive integer, got {strings[key]!r}")
        if values[key] > MAX_SIDE_PX:  # CARLA itself would try; a 100000-wide render here exhausts memory
            raise ValueError(f"{type_id}: {key} {values[key]} is over the largest side the neural camera renders "
                             f"({MAX_SIDE_PX} pixels)")
    if not 0.0 < values["fov"] < 180.0:
        raise ValueError(f"{type_id}: fov must be in (0, 180) degrees, got {strings['fov']!r}")
    if values["sensor_tick"] < 0.0:
        raise ValueError(f"{type_id}: sensor_tick must be >= 0 seconds, got {strings['sensor_tick']!r}")
    if "lens_circle_multiplier" in values and not 0.0 <= values["lens_circle_multiplier"] <= 10.0:
        # (CARLA's documented range: -3 was clamped to no effect without a word)
        raise ValueError(f"{type_id}: lens_circle_multiplier must be in [0, 10], got "
                         f"{strings['lens_circle_multiplier']!r}")
    for key in values:
        if key not in MODELLED and key not in _warned and strings[key] != definition[key].default:
            try:
                unchanged = float(strings[key]) == float(definition[key].default)
            except ValueError:
                unchanged = False
            if not unchanged:
                _warned.add(key)
                _log.warning("neural camera: attribute %s=%s is accepted but not modelled (the image is rendered "
                             "without it); this warning is given once", key, strings[key])
    parsed_defaults = {key: parse_value(type_id, key, spec.default) for key, spec in definition.items()}
    return CameraSettings(type_id, strings, values, parsed_defaults)


# ------------------------------------------------------------------ post-processing (rgb cameras)
def postprocess_active(settings: CameraSettings) -> bool:
    """True when a modelled effect changes the rgb picture (so the default camera costs nothing)."""
    v, d = settings.values, settings.defaults
    if settings.type_id != "sensor.camera.rgb" or not v["enable_postprocess_effects"]:
        return False
    return (v["exposure_compensation"] != d["exposure_compensation"] or v["gamma"] != d["gamma"]
            or v["lens_circle_multiplier"] != 0.0 or v["chromatic_aberration_intensity"] != 0.0
            or _distortion_active(v, d))


_LENS_KEYS = ("lens_k", "lens_kcube", "lens_x_size", "lens_y_size")


def _distortion_active(v: dict, d: dict) -> bool:
    """Distortion is applied once any lens_* value leaves the blueprint's defaults (the defaults are the reference
    picture: their shift is under 0.7% of the radius, and resampling every default camera would cost every tick)."""
    return any(v[key] != d[key] for key in _LENS_KEYS)


def _radius_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates about the centre, scaled so the corner is at radius 1."""
    half_diag = math.hypot(width / 2.0, height / 2.0)
    ys = (np.arange(height, dtype=np.float64) + 0.5 - height / 2.0) / half_diag
    xs = (np.arange(width, dtype=np.float64) + 0.5 - width / 2.0) / half_diag
    return np.meshgrid(xs, ys)


def _sample(channel: np.ndarray, x_norm: np.ndarray, y_norm: np.ndarray) -> np.ndarray:
    """Bilinear sample of [H, W] at normalised coordinates (as _radius_grid), edge-clamped."""
    height, width = channel.shape
    half_diag = math.hypot(width / 2.0, height / 2.0)
    px = np.clip(x_norm * half_diag + width / 2.0 - 0.5, 0.0, width - 1.0)
    py = np.clip(y_norm * half_diag + height / 2.0 - 0.5, 0.0, height - 1.0)
    x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = px - x0, py - y0
    top = channel[y0, x0] * (1 - fx) + channel[y0, x1] * fx
    bottom = channel[y1, x0] * (1 - fx) + channel[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def apply_postprocess(rgb: np.ndarray, settings: CameraSettings) -> np.ndarray:
    """[H, W, 3] float RGB in [0, 1] -> the same with the modelled effects of the module docstring applied."""
    assert rgb.ndim == 3 and rgb.shape[2] == 3, rgb.shape
    if not postprocess_active(settings):
        return rgb
    v, d = settings.values, settings.defaults
    out = rgb.astype(np.float64)
    if v["exposure_compensation"] != d["exposure_compensation"]:
        stops = v["exposure_compensation"] - d["exposure_compensation"]
        linear = np.power(np.clip(out, 0.0, 1.0), 2.2) * 2.0**stops
        out = np.power(np.clip(linear, 0.0, 1.0), 1.0 / 2.2)
    if v["gamma"] != d["gamma"]:
        out = np.power(np.clip(out, 0.0, 1.0), d["gamma"] / v["gamma"])
    height, width = out.shape[:2]
    x, y = _radius_grid(height, width)
    radius = np.hypot(x, y)
    if _distortion_active(v, d):
        rx, ry = x * v["lens_x_size"], y * v["lens_y_size"]
        r_scaled = np.hypot(rx, ry)
        factor = 1.0 + v["lens_k"] * r_scaled**2 + v["lens_kcube"] * np.abs(r_scaled) ** 3
        out = np.stack([_sample(out[..., c], x * factor, y * factor) for c in range(3)], axis=-1)
    if v["chromatic_aberration_intensity"] != 0.0:
        shift = v["chromatic_aberration_intensity"] * np.maximum(0.0, radius - v["chromatic_aberration_offset"]) * 0.01
        out = out.copy()
        out[..., 0] = _sample(out[..., 0], x * (1.0 + shift), y * (1.0 + shift))
        out[..., 2] = _sample(out[..., 2], x * (1.0 - shift), y * (1.0 - shift))
    if v["lens_circle_multiplier"] != 0.0:
        strength = min(max(v["lens_circle_multiplier"] / 10.0, 0.0), 1.0)
        falloff = np.clip(1.0 - strength * radius ** max(v["lens_circle_falloff"], 0.0), 0.0, 1.0)
        out = out * falloff[..., None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)
