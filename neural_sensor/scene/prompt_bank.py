"""The memory bank of the text prompt (`neural_sensor.scene.prompt`): described values of each layout attribute and
described scenes, as X-Scene's retrieval memory. A phrase of a prompt sets an attribute from its nearest entry here
(all-MiniLM-L6-v2 embeddings); rules (prompt_rules.py) take precedence."""

from __future__ import annotations

from neural_sensor.scene.layout import TIMES_OF_DAY

DUSK = "dusk" if "dusk" in TIMES_OF_DAY else "evening"  # after-sunset light where the styles have it, else evening

# Described values of each attribute: (phrase, value). A value may be a dict of several attributes.
ATTRIBUTE_BANK: dict[str, list[tuple[str, object]]] = {
    "plain": [  # plain nouns: a bare "buildings" or "road" names no value (it resembles "tall buildings", "wet road")
        ("a road", None), ("a street", None), ("buildings", None), ("cars", None),
        ("a lane", None), ("the city", None), ("a town", None), ("the weather", None), ("the sky", None),
        ("road", None), ("street", None), ("roads", None), ("streets", None), ("lane", None),
        ("a scene", None), ("a place", None), ("a day", None), ("traffic", None), ("a neighbourhood", None),
        ("trees", None), ("parked cars", None), ("parked", None), ("lanes", None), ("sidewalks", None),
        ("a street with buildings", None), ("a road with buildings", None),  # ("a street buildings" ~ houses)
        ("a long road", None), ("a long street", None),  # (a length: "a long road" ~ "a wide road" widened the lanes)
    ],
    "template": [
        ("a straight road", "straight"), ("a long straight street", "straight"), ("a boulevard", "straight"),
        ("an avenue", "straight"), ("a road running straight ahead", "straight"), ("a city street", "straight"),
        ("a curve", "curve"), ("a bend in the road", "curve"), ("a curved road", "curve"),
        ("a winding road", "curve"), ("a road turning left", "curve"), ("a corner the road sweeps around", "curve"),
        ("an intersection", "intersection"), ("a crossroads", "intersection"), ("a junction", "intersection"),
        ("a four-way crossing", "intersection"), ("traffic lights where two roads cross", "intersection"),
    ],
    "curvature": [  # sets radius_m / angle_deg of a curve
        ("a sharp bend", {"radius_m": 25.0}), ("a tight turn", {"radius_m": 25.0}),
        ("a sharp curve", {"radius_m": 25.0}), ("a tight curve", {"radius_m": 25.0}),  # (read as gentle before)
        ("a gentle curve", {"radius_m": 120.0}), ("a wide sweeping bend", {"radius_m": 120.0}),
        ("a hairpin bend", {"radius_m": 20.0, "angle_deg": 180.0}),
        ("a U-turn", {"radius_m": 20.0, "angle_deg": 180.0}),
    ],
    "road_width": [  # sets lane_width_m
        ("a narrow street", 3.0), ("narrow lanes", 3.0), ("a tight alley", 3.0),
        ("wide lanes", 3.8), ("a broad road", 3.8), ("a wide road", 3.8),
    ],
    "sidewalks": [
        ("wide sidewalks", 5.0), ("broad pavements for pedestrians", 5.0),
        ("narrow sidewalks", 1.8), ("a thin footpath", 1.8),
    ],
    "road_kind": [  # kinds of road that imply several attributes
        ("open countryside", {"buildings": False, "parked_cars": "none"}),
        ("fields and farmland", {"buildings": False, "parked_cars": "none"}),
        ("a rural road", {"buildings": False, "parked_cars": "none"}),
        ("a country road", {"buildings": False, "parked_cars": "none"}),
        ("a highway", {"buildings": False, "parked_cars": "none", "lane_width_m": 3.75}),
        ("a motorway", {"buildings": False, "parked_cars": "none", "lane_width_m": 3.75}),
        ("a freeway", {"buildings": False, "parked_cars": "none", "lane_width_m": 3.75}),
        ("a road through a forest", {"buildings": False, "parked_cars": "none", "trees": "many"}),
    ],
    "building_style": [
        ("office towers", "office"), ("glass office buildings", "office"), ("the business district", "office"),
        ("office blocks", "office"),
        ("downtown skyscrapers", "office"), ("commercial high-rises", "office"),
        ("apartment blocks", "apartment"), ("blocks of flats", "apartment"), ("a housing estate", "apartment"),
        ("residential tower blocks", "apartment"),
        ("an old town", "old_town"), ("historic buildings", "old_town"), ("a medieval town centre", "old_town"),
        ("old european facades", "old_town"),
        ("detached houses", "house"), ("a suburb with family homes", "house"), ("wooden houses", "house"),
        ("cottages", "house"), ("a residential street with houses", "house"),
        ("a leafy suburb", {"building_style": "house", "trees": "many"}),
    ],
    "building_height": [
        ("low buildings", [4.0, 8.0]), ("one or two storey buildings", [4.0, 8.0]), ("low-rise houses", [4.0, 8.0]),
        ("mid-rise buildings", [9.0, 16.0]),
        ("tall buildings", [18.0, 24.0]), ("high-rise towers", [18.0, 24.0]), ("skyscrapers", [18.0, 24.0]),
    ],
    "parked_cars": [
        ("no parked cars", "none"), ("a street free of parked cars", "none"),
        ("a few parked cars", "few"), ("a couple of parked cars", "few"), ("the odd parked car", "few"),
        ("some parked cars", "some"), ("cars parked here and there", "some"),
        ("many parked cars", "many"), ("lined with parked cars", "many"), ("plenty of parked cars", "many"),
        ("cars parked bumper to bumper", "many"), ("a busy street full of parked cars", "many"),
        ("cars parked on both sides", "many"), ("parked cars on one side only", "some"),
    ],
    "trees": [
        ("no trees", "none"), ("a treeless street", "none"),
        ("a few trees", "few"), ("sparse trees", "few"), ("the odd tree", "few"),
        ("some trees", "some"), ("trees here and there", "some"),
        ("lots of trees", "many"), ("lined with trees", "many"), ("a tree-lined avenue", "many"),
        ("leafy and green", "many"), ("a forest", "many"), ("plenty of trees", "many"),
    ],
    "time_of_day": [
        ("morning", "morning"), ("early morning", "morning"), ("dawn", "morning"), ("sunrise", "morning"),
        ("noon", "noon"), ("midday", "noon"), ("afternoon", "noon"), ("in broad daylight", "noon"),
        ("evening", "evening"), ("sunset", "evening"), ("golden hour", "evening"), ("late afternoon", "evening"),
        ("dusk", DUSK), ("twilight", DUSK), ("after sunset", DUSK), ("nightfall", DUSK),
    ],
    "weather": [
        ("sunny", "clear"), ("clear sky", "clear"), ("bright sunshine", "clear"), ("fine weather", "clear"),
        ("blue sky", "clear"),
        ("overcast", "overcast"), ("cloudy", "overcast"), ("grey sky", "overcast"), ("dull and gloomy", "overcast"),
        ("rain", "wet"), ("rainy", "wet"), ("wet road", "wet"), ("after the rain", "wet"), ("drizzle", "wet"),
        ("a downpour", "wet"), ("a storm", "wet"), ("puddles on the asphalt", "wet"), ("drizzly", "wet"),
        ("stormy", "wet"), ("showers", "wet"),
    ],
}

# Described scenes (X-Scene's memory entries): a sentence and the layout attributes it implies.
SCENE_BANK: list[tuple[str, dict]] = [
    ("a busy downtown street with office towers and many parked cars",
     {"template": "straight", "building_style": "office", "parked_cars": "many", "trees": "few"}),
    ("a quiet residential street with detached houses, front gardens and trees",
     {"template": "straight", "lanes_per_direction": 1, "lane_width_m": 3.0, "building_style": "house",
      "trees": "many"}),
    ("a busy city intersection with traffic lights and tall buildings",
     {"template": "intersection", "lanes_per_direction": 2, "building_style": "office", "parked_cars": "few"}),
    ("a suburban crossroads with houses and gardens",
     {"template": "intersection", "building_style": "house", "trees": "many"}),
    ("a narrow old town street with historic buildings",
     {"template": "straight", "lanes_per_direction": 1, "lane_width_m": 3.0, "building_style": "old_town",
      "trees": "few"}),
    ("a multi-lane motorway",
     {"template": "straight", "lanes_per_direction": 3, "lane_width_m": 3.75, "buildings": False,
      "parked_cars": "none", "trees": "few"}),
    ("a country road through fields and woods",
     {"template": "straight", "lanes_per_direction": 1, "buildings": False, "parked_cars": "none",
      "trees": "many"}),
    ("a winding mountain road with tight bends",
     {"template": "curve", "lanes_per_direction": 1, "radius_m": 30.0, "angle_deg": 150.0,
      "buildings": False, "parked_cars": "none", "trees": "many"}),
    ("a sweeping motorway curve",
     {"template": "curve", "radius_m": 120.0, "buildings": False, "parked_cars": "none", "trees": "few"}),
    ("a shopping street with shops and parked cars",
     {"template": "straight", "lanes_per_direction": 1, "parked_cars": "many", "trees": "few"}),
    ("a neighbourhood of apartment blocks",
     {"template": "straight", "building_style": "apartment", "parked_cars": "many"}),
    ("a wide tree-lined boulevard",
     {"template": "straight", "lanes_per_direction": 2, "sidewalk_width_m": 4.5, "trees": "many"}),
    ("an empty street with nothing parked",
     {"template": "straight", "parked_cars": "none"}),
    # plain entries: a prompt that only names a road or street retrieves the defaults, not a themed scene
    ("a straight road", {}), ("a street in town with buildings on both sides", {}), ("a two-way road", {}),
    ("an intersection", {}), ("a curve", {}),
]
