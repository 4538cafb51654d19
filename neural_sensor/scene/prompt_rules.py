"""The rules of a text prompt (`neural_sensor.scene.prompt`): what is read by pattern before retrieval fills in the
rest, and takes precedence over it.

Numbers and lengths in any unit ("a 300 m road", "half a mile", "four lanes", "6-storey buildings"), counts and
quantifiers of parked cars and trees ("a few trees", "12 parked cars"), negations and their lists ("without trees,
buildings or parked cars", "no rain"), conditions the styles lack ("at night", "fog": the nearest value, with a
note), road kinds no template draws ("a roundabout": said in the notes) and changes relative to what is there
("wider lanes", "100 m longer": `RELATIVE`, applied by the prompt module to the attributes they start from).

Public: normalise (the text the rules read), parse_rules, metres_per, RELATIVE and the constants the prompt module
shares; PromptError (re-exported by `neural_sensor.scene.prompt`).
"""

from __future__ import annotations

import math
import re

from neural_sensor.scene.layout import PALETTES, TIMES_OF_DAY
from neural_sensor.scene.prompt_bank import DUSK
from neural_sensor.scene.prompt_numbers import LENGTH_UNITS_RE, spell_out_numbers


class PromptError(ValueError):
    """A prompt that is empty or matches nothing a layout can express."""


STOREY_M = 3.0  # height of one storey

PARKED_CAR_COUNTS = (("none", 0), ("few", 4), ("some", 12), ("many", math.inf))  # a count's level: a 200 m street
#   holds about 3 / 8 / 15 parked cars at few / some / many (six seeds, a new user's count)

_NEGATED = {  # what "no X" / "without X" / "remove the X" sets
    r"parked\s+(?:cars?|vehicles?)|parking|cars?|vehicles?": ("parked_cars", "none"),
    r"trees?|vegetation|greenery": ("trees", "none"),
    r"buildings?|houses?": ("buildings", False),
}

_NEGATION = (r"\b(?:no|not|without|zero|not any|free of|remove|delete|take away|get rid of|drop|never|no more|"
             r"stop|isn't|is not|aren't|are not|avoid|lose|exclude)\s+(?:the\s+|any\s+|all\s+|a\s+|more\s+|"
             r"extra\s+|additional\s+)?")

_AND_NOUN = (r"(?:\s*,\s*(?:(?P<conj>or|and|nor)\s+)?|\s+(?P<conj2>or|and|nor)\s+)"  # "no trees or (any)
             r"(?:no\s+|any\s+|the\s+)?")  # parked cars"

_NOT_MANY = r"\b(?:not|isn't|aren't)\s+(?:so\s+|too\s+|that\s+|very\s+)?(?:many|a\s+lot\s+of|lots\s+of)\s+"

_NEGATED_CONDITIONS = [  # "no rain", "not sunny", "a dry road": (pattern, attribute, values it rules out, instead)
    (r"rain(?:y|ing|fall)?|wet|drizzl(?:e|y)|showers?|storms?|stormy|downpours?|puddles|snow(?:y|ing)?|sleet|icy|ice",
     "weather", ("wet",), "clear"),
    (r"clouds?|cloudy|overcast|grey\s+sky|gray\s+sky", "weather", ("overcast",), "clear"),
    (r"sun|sunny|sunshine|sunlight|clear\s+sky|blue\s+sky", "weather", ("clear",), "overcast"),
    (r"fog(?:gy)?|mist(?:y)?|ha(?:ze|zy)", "weather", (), None),  # (no fog: nothing to change)
    (r"night(?:time)?|midnight|after\s+dark|dark", "time_of_day", (), None),
]

_DRY = r"\b(?:dry|rain\s*-?\s*free|rainless)\b"  # a positive word for "not wet"

_UNAVAILABLE = [  # words for conditions the styles lack: (pattern, attribute, nearest value, what exists)
    (r"night(?:time)?|midnight|after dark", "time_of_day", DUSK, TIMES_OF_DAY),
    (r"fog(?:gy)?|mist(?:y)?|ha(?:ze|zy)", "weather", "overcast", PALETTES),
    (r"snow(?:y|ing)?|sleet|icy|ice", "weather", "wet", PALETTES),
]

_NOT_EXPRESSIBLE = [  # road kinds no template draws: (pattern, what is drawn instead), said in the notes
    (r"1\s*-?\s*way|single\s*-?\s*direction", "every template is a two-way road"),
    (r"(?:turn(?:s|ing)?|curv(?:e|es|ing)|bend(?:s|ing)?|sweep(?:s|ing)?|veer(?:s|ing)?)\s+(?:to\s+the\s+)?right|"
     r"right\s*-?\s*(?:hand\s+)?(?:turn|curve|bend)s?(?!\s*-?\s*(?:lanes?|signals?|arrows?|only))",
     "a curve here turns left (the curve template is a left-hand "
                                                         "curve; a right-hand one is not available)"),
    (r"roundabouts?|traffic\s+circles?|rotary", "the templates are a straight road, a curve and a four-way "
                                                "intersection; the closest of them by the rest of the prompt is used"),
    (r"(?<!')[ty]\s*-?\s*(?:junctions?|intersections?)", "an intersection here is a four-way crossing"),
    (r"(?<!')s\s*-?\s*(?:curves?|bends?)|chicanes?|zig\s*-?\s*zags?", "a curve here is one left-hand bend"),
]

MIN_SIDEWALK_M = 0.5  # the narrowest sidewalk a layout holds (`_check`); "no sidewalks" gets it, with a note

_QUANTIFIERS = {  # density level -> words before "parked cars" / "trees"
    "few": r"(?:a\s+)?few|a\s+couple\s+of|couple\s+of|1\s+or\s+2|a\s+handful\s+of|sparse|scattered|the\s+odd",
    "some": r"some|several|a\s+number\s+of",
    "many": r"many|lots\s+of|a\s+lot\s+of|plenty\s+of|loads\s+of|numerous|dense|rows\s+of|full\s+of|"
            r"packed\s+with|crowded\s+with|lined\s+with",
}

_NUM = r"(\d+(?:\.\d+)?(?:e[+-]?\d{1,2})?)"  # 300, 2.5, 1e3 (an exponent was dropped: "1e6 m" read as nothing;
#                                             at most two digits, so that no number read is infinite: "1e400")

_LENGTH_UNITS = rf"({LENGTH_UNITS_RE})"


def normalise(prompt: str) -> str:
    text = " " + prompt.lower().replace("–", "-").replace("—", " - ").replace("°", " degree ") + " "
    # typographic and plain quotes around words ("'four' lanes" retrieved a motorway: the number was not read); an
    # apostrophe inside a word stays ("isn't", "o'clock")
    text = re.sub(r"(?<=[a-z])[’'](?=[a-z])", "\x00", text)
    text = re.sub(r"[‘’“”\"'`]", " ", text).replace("\x00", "'")
    text = re.sub(r"(\d),(\d{3})\b", r"\1\2", text)
    text = spell_out_numbers(text)  # ("two hundred metres" had been 100 m: only the last word was read)
    for word, number in (("half", "0.5"), ("quarter", "0.25")):  # "a half-mile road" was the default 200 m
        text = re.sub(rf"\b(?:a\s+)?{word}(?:\s*-\s*|\s+an?\s+|\s+of\s+an?\s+|\s+)(mile|kilomet(?:re|er)|km)\b",
                      rf"{number} \1", text)
    return re.sub(r"\s+", " ", text)


def parse_rules(text: str, base_template: str | None = None) -> tuple[dict, dict, list[tuple[int, int]]]:
    """Attributes set by rules, their evidence, and the character spans they used up (base_template: the template
    of the description an edit starts from)."""
    found: dict = {}
    evidence: dict = {}
    spans: list[tuple[int, int]] = []
    relative = {}
    for pattern, key, (op, amount) in RELATIVE:  # first, and blanked: "add 1 lane" is no 1-lane road
        for match in re.finditer(pattern, text):
            groups = match.groupdict()
            count = groups.get("n") or groups.get("n2")
            if count is not None:  # "two more lanes", "100 m longer"
                amount_here = amount * float(count) * (metres_per(groups["unit"]) if groups.get("unit") else 1.0)
            else:
                amount_here = amount
            relative.setdefault(key, (op, amount_here, match.group(0).strip()))
            spans.append(match.span())
            text = text[:match.start()] + " " * (match.end() - match.start()) + text[match.end():]
    if relative:
        found["_relative"] = relative

    def take(match, attributes: dict, why: str | None = None):
        for key, value in attributes.items():
            if key not in found:
                found[key] = value
                evidence[key] = f"parsed {why or match.group(0).strip()!r}"
                taken[key] = match.span()
            elif found[key] != value and key in _SAID_TWICE and not (
                    taken[key][0] < match.end() and match.start() < taken[key][1]):  # ("2 lanes and 4 lanes": the
                found.setdefault("_notes", []).append(  # first was taken without a word)
                    f"{key} is given twice ({evidence[key][len('parsed '):]} and {match.group(0).strip()!r}); "
                    f"the first, {found[key]}, used")
        spans.append(match.span())

    taken: dict[str, tuple[int, int]] = {}

    for match in re.finditer(rf"\b(?:{_NUM}\s*-?\s*lanes?|an?\s+lane)[\s-]+(?:in[\s-]+)?(?:each|per|every|either|a)"
                             rf"[\s-]+(?:direction|way|side)", text):
        # ("two-lane-per-direction" was 1 per direction; a new user's "a lane each way" was 2)
        take(match, {"lanes_per_direction": max(1, round(float(match.group(1) or 1)))})
    for match in re.finditer(r"\b(?:1\s*-?\s*lane|single\s*-?\s*lane|1\s*-?\s*track)\b", text):
        if "lanes_per_direction" not in found:
            found.setdefault("_notes", []).append(f"{match.group(0).strip()!r} laid out as 1 lane per direction "
                                                  "(the templates are two-way roads)")
        take(match, {"lanes_per_direction": 1})
    for match in re.finditer(rf"\b{_NUM}\s*-?\s*lanes?\b(?![\s-]*(?:in[\s-]+)?(?:each|per|every|either)\b)", text):
        total = round(float(match.group(1)))
        if total < 1:
            raise PromptError(f"{match.group(0).strip()!r}: a road needs at least one lane")
        take(match, {"lanes_per_direction": math.ceil(total / 2)})
        if total % 2 and total > 1:
            found.setdefault("_notes", []).append(f"{total} lanes laid out as {math.ceil(total / 2)} per "
                                                  "direction (the templates are two-way roads)")
    # ranges first ("3 to 5 storey buildings", "10-20 m buildings", "between 10 and 20 m tall": the upper bound
    # alone had been read)
    storeys = r"(?:storeys?|stories|story|floors?|levels?)"
    for match in re.finditer(rf"\b{_NUM}\s*(?:-|to|and)\s*{_NUM}\s*-?\s*{storeys}\b", text):
        low, high = sorted((STOREY_M * float(match.group(1)), STOREY_M * float(match.group(2))))
        take(match, {"building_height_m": [round(low, 2), round(high, 2)]})
    for match in re.finditer(rf"\b{_NUM}\s*(?:-|to|and)\s*{_NUM}\s*-?\s*{_LENGTH_UNITS}\b(?=\s*(?:tall|high|"
                             rf"buildings?|houses?|towers?)\b)", text):
        unit = metres_per(match.group(3))
        low, high = sorted((float(match.group(1)) * unit, float(match.group(2)) * unit))
        take(match, {"building_height_m": [round(low, 2), round(high, 2)]})
    for match in re.finditer(rf"\b{_NUM}\s*-?\s*(?:storeys?|stories|story|floors?|levels?)\b", text):
        height = STOREY_M * float(match.group(1))
        take(match, {"building_height_m": [round(0.9 * height, 2), round(1.1 * height, 2)]})
    for match in re.finditer(rf"\b{_NUM}\s*-?\s*degrees?\b", text):
        take(match, {"angle_deg": float(match.group(1)), "template": "curve"})
    for match in re.finditer(rf"\b{_NUM}\s*(?:km\s*/\s*h|kmh|kph|mph|m\s*/\s*s|(?:km|kilomet(?:re|er)s?|miles?|m|"
                             rf"met(?:re|er)s?)\s+(?:per|an|a)\s+(?:hour|second))\b", text):
        found.setdefault("_notes", []).append(f"{match.group(0).strip()!r} is a speed, which a layout does not have "
                                              "(a scenario sets its speeds in Python: target_speed_mps, "
                                              "AgentSpec.speed_mps); left out")
        spans.append(match.span())
    speed_after = r"(?!\s*(?:/\s*[hs]\b|(?:per|an|a)\s+(?:hour|second)\b))"  # "50 km/h" is no 50 km road
    for match in re.finditer(rf"\b{_NUM}\s*-?\s*{_LENGTH_UNITS}\b{speed_after}", text):
        value = float(match.group(1)) * metres_per(match.group(2))
        before, after = text[max(0, match.start() - 24):match.start()], text[match.end():match.end() + 30]
        subject = r"\s+(?:(?:that|which)\s+)?(?:are|is|of|about|each|roughly|around)?\s*$"  # "sidewalks (are) 5 m wide"
        if not re.match(r"\s*(?:wide|long|tall|high|across)\b", after) and (
                re.search(r"\b(?:every|each|per|spaced|apart)\s+(?:about\s+)?$", before)
                or re.match(r"\s*(?:ahead|away|apart|behind|back|further|later|in\s+front|off|before|after|"
                            r"from|into|down|up|along|between|setback|set\s+back|high\s+kerb)\b", after)
                or re.search(r"\b(?:set\s*back|setback|after|within|ahead)\s+(?:of\s+|by\s+|about\s+)?$", before)):
            # (not "lanes each 3 m wide": a width)
            # a spacing or a position ("trees every 10 m", "a crosswalk 50 m ahead", "set back 5 m"), not a length
            found.setdefault("_notes", []).append(f"{match.group(0).strip()!r} is a spacing or a position, which a "
                                                  "layout does not take; left out")
            spans.append(match.span())
        elif re.match(r"\s*across\b", after) and (base_template == "intersection" or re.search(
                r"\b(?:intersection|junction|crossroads?|crossing)\b[^;.]*$", before)):
            take(match, {"length_m": value})  # an intersection "120 m across" is its extent (as `describe` says)
        elif re.match(r"\s*(?:wide|width|across)\b", after) or re.search(r"\b(?:width|wide)\s+(?:of\s+)?$", before):
            noun_before = (re.search(rf"\b(?:sidewalks?|pavements?|footpaths?){subject}", before),
                           re.search(rf"\blanes?(?:\s+each)?{subject}", before))
            each = re.search(r"(?:\b(?:that|which|whose)\s+)?(?:\b(?:are|is)\s+)?\beach\s+(?:about\s+)?$", before)
            if each:  # ("a road whose are each", left to the embedding, read as a country road)
                spans.append((match.start() - len(before) + each.start(), match.start()))
            clause = re.split(r"[;.]", text[max(0, match.start() - 80):match.start()])[-1]
            nearest = list(re.finditer(r"\b(lanes?|sidewalks?|pavements?|footpaths?)\b", clause))
            if each and nearest:  # the noun "each" refers to: consumed with the number ("lanes" alone: a motorway)
                start = match.start() - len(clause)
                spans.append((start + nearest[-1].start(), start + nearest[-1].end()))
            if re.match(r"\s*(?:wide|width)?\s*(?:sidewalks?|pavements?|footpaths?)", after) or noun_before[0] or (
                    each and nearest and not nearest[-1].group(1).startswith("lane")):
                take(match, {"sidewalk_width_m": value})
            elif re.match(r"\s*(?:wide|width)?\s*lanes?\b", after) or noun_before[1] or (each and nearest):
                take(match, {"lane_width_m": value})  # ("two lanes per direction, each 3 m wide": the lanes')
            elif each:  # "each 3 m wide" of nothing this reads: no road's width (it had refused valid prompts)
                found.setdefault("_notes", []).append(f"{match.group(0).strip()!r} wide: of what is not read; left "
                                                      "out")
                spans.append(match.span())
            else:
                take(match, {"road_width_m": value})
            for noun in noun_before:  # "lanes are 3 m wide": "lanes" left alone was read as a multi-lane motorway
                if noun:
                    offset = match.start() - len(before)
                    spans.append((offset + noun.start(), offset + noun.end()))
                    break
            noun = re.match(r"\s*(?:wide|width|across)?\s*(?:lanes?|sidewalks?|pavements?|footpaths?)?\b", after)
            spans.append((match.end(), match.end() + noun.end()))  # ("lanes" left alone read as a motorway)
        elif re.match(r"\s*lanes?\b(?!\s*-?\s*chang)", after):  # "3 m lane", not "a 500 m lane change"
            take(match, {"lane_width_m": value})
            spans.append((match.end(), match.end() + re.match(r"\s*lanes?\b", after).end()))
        elif re.match(r"\s*(?:sidewalks?|pavements?|footpaths?)\b", after):
            take(match, {"sidewalk_width_m": value})
            spans.append((match.end(), match.end() + re.match(r"\s*\w+", after).end()))
        elif re.match(r"\s*(?:tall|high)\b", after) or re.match(r"\s*(?:buildings?|houses?|towers?)", after):
            take(match, {"building_height_m": [round(0.9 * value, 2), round(1.1 * value, 2)]})
        elif re.search(r"\bradius\s+(?:of\s+)?(?:about\s+)?$", before) or re.match(r"\s*radius\b", after):
            take(match, {"radius_m": value, "template": "curve"})
        else:
            take(match, {"length_m": value})
            tail = re.match(r"\s*(?:long|in\s+length)\b", after)  # "300 m long": "long" is the length's, not a
            if tail:  # phrase of its own ("a road long" matched "a wide road")
                spans.append((match.end(), match.end() + tail.end()))
    for match in re.finditer(r"\b(\d{1,2})(?::(\d\d))?\s*(am|pm|h|hrs|o'clock)?(?![\w.])", text):
        if match.group(2) is None and match.group(3) is None:
            continue  # a bare number is not a time
        hour = int(match.group(1)) % 12 + (12 if match.group(3) == "pm" else 0) if match.group(3) in ("am", "pm") \
            else int(match.group(1))
        if not 0 <= hour <= 24:
            continue
        time_of_day = ("morning" if 5 <= hour < 10 else "noon" if 10 <= hour < 16 else "evening" if 16 <= hour < 20
                       else DUSK)  # (0-5 h and 20-24 h: after sunset; 3 am was read as evening)
        if hour >= 22 or hour < 5:
            found.setdefault("_notes", []).append(f"{match.group(0).strip()!r} is night, which the styles do not "
                                                  f"have ({', '.join(TIMES_OF_DAY)}); {DUSK} used")
        take(match, {"time_of_day": time_of_day})
    ruled_out: dict[str, list[tuple[tuple, object, str]]] = {}  # attribute -> [(values ruled out, instead, why)]
    negated_spans = []
    for pattern, key, values, instead in _NEGATED_CONDITIONS:  # ("not at night" had been read as night)
        for match in list(re.finditer(_NEGATION + rf"(?:(?:at|in|during)\s+(?:the\s+)?)?(?:{pattern})\b", text)) + list(
                re.finditer(rf"\b(?:{pattern})\s*-?\s*(?:free|less)\b", text)):
            negated_spans.append(match.span())
            spans.append(match.span())
            if values:
                ruled_out.setdefault(key, []).append((values, instead, match.group(0).strip()))
    for match in re.finditer(_DRY, text):
        negated = re.search(r"\b(?:not|never|isn't|no\s+longer)\s+$", text[max(0, match.start() - 12):match.start()])
        if negated:  # "the road is not dry": wet
            take(match, {"weather": "wet"}, f"{negated.group(0)}{match.group(0)}".strip())
            spans.append((match.start() - len(negated.group(0)), match.start()))
            continue
        spans.append(match.span())  # (left to the embedding, "a dry road under a grey sky" read as a curve)
        ruled_out.setdefault("weather", []).append((("wet",), "clear", match.group(0).strip()))
    if ruled_out:
        found["_ruled_out"] = ruled_out
    for pattern, key, value, known in _UNAVAILABLE:
        for match in re.finditer(rf"\b(?:{pattern})\b", text):
            if any(a <= match.start() < b for a, b in negated_spans):
                continue  # "no fog", "not at night": nothing asked for
            if key not in found:
                found.setdefault("_notes", []).append(f"{match.group(0)!r} is not available ({key}: "
                                                      f"{', '.join(known)}); {value} used")
            take(match, {key: value})
    negation = _NEGATION
    nouns = "|".join(f"(?:{pattern})" for pattern in _NEGATED)
    for match in re.finditer(negation + rf"(?:{nouns})\b", text):  # and the nouns listed after it: "no trees or
        end = match.start()  # parked cars" (only the first had been negated, the cars came from the scene)
        for item in [match] + list(_listed(text, match.end(), nouns)):
            noun = item.group(0)[end - item.start():] if item is match else item.group(0)
            key, value = next(kv for pattern, kv in _NEGATED.items() if re.search(rf"(?:{pattern})\b\s*$", noun))
            take(item, {key: value})
    for pattern, (key, value) in _NEGATED.items():
        for match in re.finditer(rf"\b(?:{pattern})\s*-?\s*(?:free|less)\b", text):
            take(match, {key: value})
    for key, noun in (("parked_cars", r"parked\s+(?:cars?|vehicles?)|cars?"), ("trees", r"trees|greenery")):
        for match in re.finditer(_NOT_MANY + rf"(?:{noun})\b", text):  # "not so many parked cars" had been many
            take(match, {key: "few"})
    # "no sidewalks": every template has them; the narrowest a layout holds (the embedding read "no sidewalks" as
    # "wide sidewalks", 0.70)
    for match in re.finditer(negation + r"(?:sidewalks?|pavements?|footpaths?)\b", text):
        if "sidewalk_width_m" not in found:
            found.setdefault("_notes", []).append(f"{match.group(0).strip()!r}: a street here always has sidewalks; "
                                                  f"the narrowest, {MIN_SIDEWALK_M:g} m, used")
        take(match, {"sidewalk_width_m": MIN_SIDEWALK_M})
    for match in re.finditer(_DAYTIME, text):
        take(match, {"time_of_day": "noon"})
    for match in re.finditer(r"\b(?:leafy|wooded|tree\s*-?\s*lined)\b", text):  # read as "treeless" (0.72)
        take(match, {"trees": "many"})
    # turns: a turn lane, signal or arrow is no road shape (consumed, nothing set); at a junction a turn is the
    # driver's, not the road's; else a turn, said as a noun or a verb, is a 90-degree curve (the bank's U-turn and
    # hairpin had caught them all)
    for match in re.finditer(r"\b(?:left|right)\s*-?\s*turn(?:ing)?\s*-?\s*(?:only\s+)?(?:lanes?|signals?|arrows?|"
                             r"pockets?)\b", text):
        found.setdefault("_notes", []).append(f"{match.group(0).strip()!r}: turn lanes and signals are not drawn")
        spans.append(match.span())
    at_junction = re.search(r"\b(?:intersections?|junctions?|crossroads?|crossings?)\b", text) is not None
    turn = (r"\b(?:a\s+)?(?:(?:left|right)\s*-?\s*(?:hand\s+)?turn|turn(?:s|ing)?\s+(?:to\s+the\s+)?"
            r"(?:left|right))\b(?!\s*-?\s*(?:lanes?|signals?|arrows?|only|pockets?))")
    for match in re.finditer(turn, text):
        if any(a <= match.start() < b for a, b in spans):
            continue
        take(match, {} if at_junction else {"template": "curve", "angle_deg": 90.0})
    for pattern, note in _NOT_EXPRESSIBLE:
        for match in re.finditer(rf"\b(?:{pattern})\b", text):
            found.setdefault("_notes", []).append(f"{match.group(0).strip()!r} is not available: {note}")
    for match in re.finditer(rf"\b{_NUM}\s+parked\s+(?:cars?|vehicles?)\b", text):  # a count is read as the
        count = float(match.group(1))  # density it makes on a 200 m street ("10 parked cars" had been "few")
        level = next(lv for lv, most in PARKED_CAR_COUNTS if count <= most)
        found.setdefault("_notes", []).append(f"{match.group(0).strip()!r} read as {level!r} parked cars (a density "
                                              "along the road, not a count)")
        take(match, {"parked_cars": level})
    # quantifiers: the embedding hardly tells "many trees" from "a few trees" (0.91), so they are parsed
    for level, words in _QUANTIFIERS.items():
        for key, noun in (("parked_cars", r"parked\s+(?:cars?|vehicles?)"), ("trees", r"trees|greenery")):
            for match in re.finditer(rf"\b(?:{words})\s+(?:{noun})\b", text):
                take(match, {key: level})
    # a bare "with trees" / "add parked cars" asks for some (the embedding read "a street with trees" as treeless,
    # 0.80, and "with parked cars" named nothing in an edit); a quantifier above wins
    for key, noun in (("parked_cars", r"parked\s+(?:cars?|vehicles?)"), ("trees", r"trees|greenery")):
        for match in re.finditer(rf"\b(?:with|add|has|have|and|plus)\s+(?:{noun})\b", text):
            take(match, {key: "some"})
    return found, evidence, spans


def _listed(text: str, start: int, nouns: str) -> list:
    """The matches of the nouns a negation lists after its first one from `start`: joined by "or" / "nor", or by
    "," / "and" up to a noun that ends its clause ("without trees, buildings and parked cars."); a noun that starts
    a clause of its own is not negated ("no parked cars and trees everywhere", "without trees, cars parked bumper to
    bumper": a reviewer's findings)."""
    items, upto = [], 0
    pattern = re.compile(_AND_NOUN + rf"(?:{nouns})\b")
    while True:
        item = pattern.match(text, start)
        if item is None or item.end() == start:
            break
        items.append(item)
        if (item.group("conj") or item.group("conj2")) in ("or", "nor") or re.match(r"\s*(?:[,.;!?]|$)",
                                                                                     text[item.end():]):
            upto = len(items)
        start = item.end()
    return items[:upto]

_SAID_TWICE = ("lanes_per_direction", "length_m", "lane_width_m", "sidewalk_width_m", "radius_m", "angle_deg")

_DAYTIME = r"\b(?:day\s*-?\s*time|during\s+the\s+day|by\s+day|(?:in\s+)?(?:broad\s+)?day\s*light)\b"  # (~ dusk)

_NOT_BEFORE = r"(?<!\bno )(?<!\bnot )(?<!\bany )"  # "no more trees", "not more", "no longer": no change asked

_LONGER = {"longer": 1.5, "shorter": 1 / 1.5}

RELATIVE = [  # changes said relative to what is there ("wider lanes" had narrowed them, ~ "narrow lanes" 0.93):
    #   (pattern, attribute, ("add", amount) | ("times", factor) | ("level", steps)); a group "n" multiplies the
    #   amount (and a group "unit" turns it into metres)
    *[(rf"(?:\b(?:make\s+|making\s+)?(?:the\s+|all\s+)?lanes?\s+)?\b(?P<n>\d+(?:\.\d+)?)\s*-?\s*"
       rf"(?P<unit>{LENGTH_UNITS_RE})\s+{word}(?:\s+lanes?)?\b", "lane_width_m",
       ("add", 1.0 if word == "wider" else -1.0)) for word in ("wider", "narrower")],
    #   "make the lanes 0.5 m narrower", "1 m wider lanes" (a new user's: 0.5 m was read as the road's length, and
    #   refused); before the plain "wider lanes", which would leave the number to be read as a length
    (r"\b(?:wider|broader)\s+lanes?\b|\bwiden(?:ing)?\s+(?:the\s+|all\s+)?lanes?\b|"
     r"\blanes?\s+(?:a\s+bit\s+|slightly\s+|much\s+)?(?:wider|broader)\b", "lane_width_m", ("add", 0.5)),
    (r"\b(?:narrower|tighter)\s+lanes?\b|\bnarrow(?:ing)?\s+(?:the\s+|all\s+)lanes?\b|"
     r"\blanes?\s+(?:a\s+bit\s+|slightly\s+|much\s+)?(?:narrower|tighter)\b", "lane_width_m", ("add", -0.5)),
    (_NOT_BEFORE + r"\b(?P<n>\d+)\s+(?:more|extra|additional)\s+lanes?\b", "lanes_per_direction", ("add", 1)),
    (r"\b(?P<n>\d+)\s+(?:fewer|less)\s+lanes?\b|\b(?P<n2>1)\s+lanes?\s+(?:fewer|less)\b", "lanes_per_direction",
     ("add", -1)),
    (r"\b(?:add|adding)\s+(?:a|an|1|another)\s+(?:extra\s+|more\s+)?lane\b|\ban?\s+(?:more|extra|additional)"
     r"\s+lanes?\b|\banother\s+lane\b|" + _NOT_BEFORE + r"\bmore\s+lanes\b", "lanes_per_direction", ("add", 1)),
    (r"\b(?:a|one)\s+(?:fewer|less)\s+lanes?\b|\b(?:remove|drop|take\s+away|lose)\s+(?:a|an|1)\s+lane\b|"
     r"\bfewer\s+lanes\b", "lanes_per_direction", ("add", -1)),
    (_NOT_BEFORE + r"\b(?:more|extra|additional)\s+parked\s+(?:cars?|vehicles?)\b", "parked_cars", ("level", 1)),
    (r"\b(?:fewer|less)\s+parked\s+(?:cars?|vehicles?)\b", "parked_cars", ("level", -1)),
    (_NOT_BEFORE + r"\b(?:more|extra|additional)\s+(?:trees|greenery)\b", "trees", ("level", 1)),
    (r"\b(?:fewer|less)\s+(?:trees|greenery)\b", "trees", ("level", -1)),
    (r"\b(?:taller|higher)\s+(?:buildings?|houses?|towers?)\b|\b(?:buildings?|houses?)\s+(?:a\s+bit\s+|much\s+)?"
     r"(?:taller|higher)\b", "building_height_m", ("times", 1.5)),  # (~ "tall buildings"; "shorter" had too)
    (r"\b(?:shorter|lower)\s+(?:buildings?|houses?|towers?)\b|\b(?:buildings?|houses?)\s+(?:a\s+bit\s+|much\s+)?"
     r"(?:shorter|lower)\b", "building_height_m", ("times", 1 / 1.5)),
    (r"\b(?:double|twice)\s+(?:the\s+)?(?:length|as\s+long)\b", "length_m", ("times", 2.0)),
    (r"\bhalf\s+(?:the\s+)?(?:length|as\s+long)\b", "length_m", ("times", 0.5)),
    *[(rf"\b(?P<n>\d+(?:\.\d+)?)\s*-?\s*(?P<unit>{LENGTH_UNITS_RE})\s+{word}\b", "length_m",
       ("add", 1.0 if word == "longer" else -1.0)) for word in _LONGER],  # "100 m longer"
    *[(rf"\b{word}\s+by\s+(?P<n>\d+(?:\.\d+)?)\s*-?\s*(?P<unit>{LENGTH_UNITS_RE})\b", "length_m",
       ("add", 1.0 if word == "longer" else -1.0)) for word in _LONGER],  # "shorter by 50 m" (a new user's: 50 m)
    (r"\bhalve\s+(?:the\s+)?(?:length|road|street)\b", "length_m", ("times", 0.5)),
    *[(rf"{_NOT_BEFORE}\b(?:make|making)\s+(?:it|the\s+(?:road|street))\s+(?:a\s+bit\s+|much\s+|slightly\s+)?"
       rf"{word}\b|\b(?:a\s+)?(?:much\s+|slightly\s+)?{word}\s+(?:road|street|drive|stretch)\b|"
       rf"\b(?:road|street)\s+(?:is\s+|much\s+|a\s+bit\s+)?{word}\b|"
       rf"^\s*(?:much\s+|a\s+bit\s+|slightly\s+)?{word}\b(?=\s*(?:[,;.!]|and\b|$))", "length_m",
       ("times", factor)) for word, factor in _LONGER.items()],  # (the road's: not "shorter buildings")
]


def metres_per(unit: str) -> float:
    """Metres in one of `_LENGTH_UNITS` (feet and miles were not read: "a 500 ft road" was 200 m, without a note)."""
    if unit.startswith("k"):
        return 1000.0
    if unit.startswith("mi"):
        return 1609.344
    if unit.startswith(("ft", "fe", "fo")):
        return 0.3048
    if unit.startswith("y"):
        return 0.9144
    return 1.0
