"""A small synthetic E2E-format corpus, generated here (not taken from the E2E release).

MRs use the E2E attribute schema (name, eatType, food, priceRange, customer rating, area,
familyFriendly, near) with invented venue names; each MR gets 1-3 references realised from
phrase templates (varied wording, every attribute mentioned), so a small model can learn
the mapping on a small budget. Output: CSVs with columns mr, ref (several refs per MR on
consecutive lines), like the challenge files, e.g. for the default offline training run.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

_FIRST = [
    "Copper",
    "Blue",
    "Golden",
    "Silver",
    "Red",
    "Green",
    "Old",
    "Little",
    "Crooked",
    "Velvet",
    "Amber",
    "Hidden",
    "Lucky",
    "Quiet",
    "Rusty",
    "Scarlet",
    "Wild",
    "Northern",
    "Sunny",
    "Iron",
]
_SECOND = [
    "Kettle",
    "Lantern",
    "Anchor",
    "Fox",
    "Oak",
    "Spoon",
    "Harbour",
    "Meadow",
    "Compass",
    "Barrel",
    "Finch",
    "Bridge",
    "Orchard",
    "Pebble",
    "Lion",
    "Mill",
    "Tavern",
    "Thistle",
]
_EAT = ["coffee shop", "pub", "restaurant"]
_FOOD = ["Chinese", "English", "Fast food", "French", "Indian", "Italian", "Japanese"]
_PRICE = ["cheap", "less than £20", "£20-25", "moderate", "high", "more than £30"]
_RATING = ["1 out of 5", "3 out of 5", "5 out of 5", "low", "average", "high"]
_AREA = ["city centre", "riverside"]

_PRICE_PHRASES = {
    "cheap": ["It is cheap", "Prices there are low"],
    "less than £20": ["It costs less than £20", "Prices are under £20"],
    "£20-25": ["It is in the £20-25 price range", "Prices are £20-25"],
    "moderate": ["It is moderately priced", "Prices there are moderate"],
    "high": ["It is expensive", "Prices there are high"],
    "more than £30": ["It costs more than £30", "Prices are above £30"],
}


def _name(rng: random.Random) -> str:
    name = f"{rng.choice(_FIRST)} {rng.choice(_SECOND)}"
    return f"The {name}" if rng.random() < 0.4 else name


def random_mr(rng: random.Random) -> dict[str, str]:
    """name always present; 2-6 of the other attributes."""
    mr = {"name": _name(rng)}
    optional = {
        "eatType": lambda: rng.choice(_EAT),
        "food": lambda: rng.choice(_FOOD),
        "priceRange": lambda: rng.choice(_PRICE),
        "customer rating": lambda: rng.choice(_RATING),
        "area": lambda: rng.choice(_AREA),
        "familyFriendly": lambda: rng.choice(["yes", "no"]),
        "near": lambda: _name(rng),
    }
    for key in rng.sample(list(optional), rng.randint(2, 6)):
        mr[key] = optional[key]()
    order = [
        "name",
        "eatType",
        "food",
        "priceRange",
        "customer rating",
        "area",
        "familyFriendly",
        "near",
    ]
    return {k: mr[k] for k in order if k in mr}


def mr_to_text(mr: dict[str, str]) -> str:
    """The E2E MR string: 'name[X], eatType[pub], ...'."""
    return ", ".join(f"{k}[{v}]" for k, v in mr.items())


def realise(mr: dict[str, str], rng: random.Random) -> str:
    """One reference sentence mentioning every attribute of the MR."""
    kind = mr.get("eatType", "place")
    head = f"{mr['name']} is a"
    adjs = []
    if (
        "priceRange" in mr
        and mr["priceRange"] in ("cheap", "moderate", "high")
        and rng.random() < 0.5
    ):
        adjs.append(
            {"cheap": "cheap", "moderate": "moderately priced", "high": "expensive"}[
                mr["priceRange"]
            ]
        )
        price_done = True
    else:
        price_done = False
    if "food" in mr:
        adjs.append(mr["food"])
    noun = " ".join(adjs + [kind])
    article_fix = "an" if noun[0].lower() in "aeiou" else "a"
    first = f"{mr['name']} is {article_fix} {noun}"
    del head
    clauses = []
    if "area" in mr:
        clauses.append(rng.choice([f"in the {mr['area']}", f"located in the {mr['area']}"]))
    if "near" in mr:
        clauses.append(rng.choice([f"near {mr['near']}", f"close to {mr['near']}"]))
    sentence = first + (" " + " ".join(clauses) if clauses else "") + "."
    extras = []
    if "priceRange" in mr and not price_done:
        extras.append(rng.choice(_PRICE_PHRASES[mr["priceRange"]]))
    if "customer rating" in mr:
        r = mr["customer rating"]
        extras.append(rng.choice([f"Its customer rating is {r}", f"Customers rate it {r}"]))
    if "familyFriendly" in mr:
        yes = mr["familyFriendly"] == "yes"
        extras.append(
            rng.choice(["It is family friendly", "It welcomes children"])
            if yes
            else rng.choice(["It is not family friendly", "It is not suitable for children"])
        )
    if extras:
        sentence += " " + ". ".join(extras) + "."
    return sentence


def write_e2e_sample(
    directory: str | Path, n_train_mrs: int = 400, n_test_mrs: int = 60, seed: int = 0
) -> tuple[Path, Path]:
    """Write train.csv and test.csv (columns mr, ref; 1-3 refs per MR). Returns their paths.
    Each file is written under a temporary name and renamed into place, so the processes of a
    multi-process run, which all write the same sample, never read a half-written file."""
    if n_train_mrs < 1 or n_test_mrs < 1:
        raise ValueError("n_train_mrs and n_test_mrs must be >= 1")
    rng = random.Random(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    paths = []
    for fname, n in (("train.csv", n_train_mrs), ("test.csv", n_test_mrs)):
        path = directory / fname
        tmp = directory / f".{fname}.{os.getpid()}.tmp"
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["mr", "ref"])
            written = 0
            while written < n:
                mr = random_mr(rng)
                text = mr_to_text(mr)
                if text in seen:
                    continue  # test MRs never appear in training
                seen.add(text)
                refs = {realise(mr, rng) for _ in range(rng.randint(1, 3))}
                for ref in sorted(refs):
                    writer.writerow([text, ref])
                written += 1
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]
