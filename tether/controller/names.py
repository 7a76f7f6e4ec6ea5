"""Names for containers run without ``--name``: an adjective and a noun, as Docker's.

Why not a name derived from the ID (what tether gave before, ``t`` and 11 hex digits):
the ID is already there to be typed (``ps`` shows it, and every verb takes a unique
prefix of it), so a second hex string adds nothing and reads like an ID prefix that is
not one. A word pair is easy to say and to type (``tether logs brave_otter``), and the
underscore keeps it apart from every ID prefix (IDs are hex), so a generated name never
shadows a prefix. 64 x 64 pairs; past a few collisions a number is appended, as Docker
does, so a host with thousands of containers still finds a free name in a few gets.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["random_name", "unused_name"]

ADJECTIVES = (
    "agile", "amber", "ample", "bold", "brave", "brisk", "calm", "clever", "cosmic", "crisp",
    "curious", "daring", "deft", "eager", "early", "fair", "fancy", "fast", "fierce", "fluent",
    "gentle", "glad", "golden", "happy", "hardy", "honest", "humble", "jolly", "keen", "kind",
    "lively", "loyal", "lucid", "lucky", "mellow", "merry", "mighty", "modest", "neat", "nimble",
    "noble", "patient", "plucky", "polite", "proud", "quick", "quiet", "rapid", "ready", "robust",
    "rustic", "serene", "sharp", "shiny", "silent", "sleek", "smart", "snappy", "steady", "sturdy",
    "sunny", "swift", "tidy", "witty",
)  # fmt: skip
NOUNS = (
    "albatross", "antelope", "badger", "beaver", "bison", "bobcat", "buffalo", "camel", "caribou", "cheetah",
    "condor", "cougar", "coyote", "crane", "dingo", "dolphin", "eagle", "falcon", "ferret", "finch",
    "gazelle", "gecko", "gibbon", "heron", "ibex", "jackal", "jaguar", "kestrel", "koala", "lemur",
    "leopard", "lynx", "magpie", "marmot", "marten", "meerkat", "mink", "moose", "narwhal", "ocelot",
    "orca", "osprey", "otter", "owl", "panda", "panther", "pelican", "penguin", "puffin", "quail",
    "raven", "reindeer", "robin", "salmon", "seal", "sparrow", "stork", "swift", "tapir", "tiger",
    "toucan", "walrus", "wombat", "yak",
)  # fmt: skip


def random_name(rng: random.Random | None = None, attempt: int = 0) -> str:
    """``adjective_noun``; from the sixth attempt on, with a number appended."""
    pick = rng or random
    name = f"{pick.choice(ADJECTIVES)}_{pick.choice(NOUNS)}"
    return f"{name}{pick.randrange(100)}" if attempt >= 5 else name


def unused_name(taken: Callable[[str], bool], fallback: str, attempts: int = 32) -> str:
    """A random name for which ``taken`` is false; ``fallback`` if none turns up (it
    never should: that would take thousands of containers with unlucky draws)."""
    for attempt in range(attempts):
        name = random_name(attempt=attempt)
        if not taken(name):
            return name
    return fallback
