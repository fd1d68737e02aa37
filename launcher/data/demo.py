"""Deterministic generator of the demo's 3-class review-sentiment dataset.

Every text is produced by the small grammar in this module from a seed; nothing is downloaded
and no third-party corpus is involved. The generated data is released with the project under
Apache-2.0.

Labels follow fixed composition rules, so the data is noise-free but not bag-of-words easy:
- contrast: "A but B", "A. However, B", "B although A" -> the polarity of B
- negation flips polarity ("not bad at all" is positive, "I can't say it was good" negative)
- "A and B" with opposite polarities, "neither good nor bad", plain facts, "just okay" -> neutral
- comparisons depend on word order ("this is better than X" vs "X was better than this")
- expectations: "I expected it to be great, and it was" vs "..., but it wasn't"

Usage: python -m launcher.data.demo --out data/demo
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

LABELS = ("positive", "negative", "neutral")
# Not exactly balanced on purpose: a majority share near 37% keeps the majority baseline honest.
LABEL_WEIGHTS = (0.37, 0.34, 0.29)
MIN_WORDS, MAX_WORDS = 8, 40

# "# name (verb for intros)", then aspects ("*" = plural), +good events, -bad events, =facts.
_PRODUCT_TABLE = """
# pair of headphones (bought)
sound|battery|noise cancelling|Bluetooth connection|ear cushions*|microphone
+the battery lasts all week|it blocks out the train noise completely
-the battery died in a day|the left side started crackling after a week
=it comes with a carrying pouch|it charges over USB-C|it folds flat for travel
# blender (bought)
motor|jar|blades*|lid|speed dial
+it crushes ice in seconds|the smoothies come out perfectly smooth
-the lid leaks every time|the motor smells like burning plastic
=it has five speed settings|the jar holds about a litre|it comes in red and white
# hotel room (booked)
bed|shower|view|staff*|wifi|air conditioning
+we slept like babies|the staff upgraded us without being asked
-we barely slept because of the noise|the shower ran cold every morning
=it was on the fourth floor|breakfast was served from seven|it faced the car park
# laptop (bought)
screen|keyboard|battery|trackpad|speakers*|fan
+the battery gets me through a full workday|it boots in a few seconds
-the battery died in two hours|the fan screams under any load
=it has two USB ports|it came with the charger in the box|it weighs about a kilo
# backpack (bought)
zipper|straps*|pockets*|fabric|laptop sleeve
+everything stayed dry in a downpour|it carries a full load without hurting my back
-a strap tore on the first trip|the zipper split after a month
=it holds a fifteen inch laptop|it comes in three colours|it has a side bottle pocket
# budgeting app (downloaded)
interface|login|notifications*|sync|bank import
+it caught a double charge on my card|syncing between my phone and tablet just works
-it logged me out every single day|it lost a month of my entries
=it asks for a monthly subscription|it supports several currencies|it updated last week
# restaurant (tried)
food|service|waiter|desserts*|portions*|wine list
+the pasta tasted homemade|they found us a table on a busy Friday
-we waited an hour for cold soup|the fish tasted like it was days old
=it is near the station|they take bookings by phone|the menu changes every season
# coffee maker (bought)
carafe|timer|hot plate|filter|water tank
+the coffee is ready when I wake up|it brews a full pot in minutes
-the carafe cracked in the first week|it leaks onto the counter
=it makes up to ten cups|it uses paper filters|the cord is about a metre long
# vacuum cleaner (bought)
suction|battery|brush head|dust bin|attachments*
+it picks up all the dog hair|it cleans the whole flat on one charge
-it just pushes crumbs around|the battery gives out after ten minutes
=it comes with three attachments|it hangs on a wall bracket|the bin empties from the bottom
# pair of running shoes (bought)
cushioning|grip|laces*|fit|soles*
+my knees stopped hurting on long runs|they felt broken in from day one
-they gave me blisters on the first run|the sole peeled off after a month
=they come in half sizes|they are mostly blue|the box had spare laces
# phone case (bought)
grip|buttons*|edges*|finish|camera cutout
+my phone survived a drop onto concrete|it still looks new after a year
-my phone cracked on the first drop|it turned yellow in a month
=it is made of silicone|it fits the standard model|it has a slot for one card
# desk chair (bought)
seat|armrests*|back support|wheels*|height lever
+my back pain went away|I can sit in it all day
-the seat sank within a month|one wheel snapped off
=it took twenty minutes to assemble|it comes in grey|it has a mesh back
# tent (bought)
poles*|zips*|rain fly|floor|pegs*
+it kept us dry through a night of storms|it goes up in five minutes
-it flooded on the first night|a pole snapped in light wind
=it sleeps two people|it packs into a small bag|it has one door
"""

POSITIVE_ADJ = "great|excellent|fantastic|superb|solid|impressive|wonderful|brilliant|good|lovely"
NEGATIVE_ADJ = "terrible|awful|poor|disappointing|dreadful|bad|horrible|useless|lousy|frustrating"
MILD_ADJ = "okay|fine|average|acceptable|alright|ordinary|nothing special"
BETTER = "better|more reliable|sturdier|more comfortable|easier to use|nicer|faster"
WORSE = "worse|less reliable|flimsier|less comfortable|harder to use|clumsier|slower"
INTENSIFIERS = ("", "", "", "really ", "pretty ", "quite ")
WHEN = "last month|a few weeks ago|in the spring|for my birthday|on a whim|after a long search"
ARRIVAL = "arrived on Tuesday|arrived a day early|came in a plain box|arrived on time"

# Templates are "|"-separated; placeholders are filled by the builders below.
NEGATED = (
    "{subj} {be}n't {adj}|{subj} {be} not {adj} at all|I can't say {subj} {be} {adj}"
    "|I wouldn't call {subj} {adj}|there {be1} nothing {adj} about {subj}"
)
# The label follows {win}; {lose} is the clause the contrast marker overrides.
CONTRAST = (
    "{lose}, but {win}|{lose}. However, {win}|although {lose}, {win}|{win}, although {lose}"
    "|{win}, even though {lose}|{lose}, yet {win}|sure, {lose}, but {win}|{lose}. That said, {win}"
)
EXPECT_MET = "{start}, and {it} {be}|{start}, and that turned out to be true"
EXPECT_MISSED = (
    "{start}, but {it} {be}n't|{start}, but {it} turned out {adj}"
    "|{start}, and that turned out to be wrong"
)
COMPARE = {
    "positive": "{this} is {better} than {ref}|{ref} was {worse} than {this}"
    "|I like {this} more than {ref}",
    "negative": "{this} is {worse} than {ref}|{ref} was {better} than {this}"
    "|I liked {ref} more than {this}",
    "neutral": "{this} is about as good as {ref}|{this} is no better and no worse than {ref}"
    "|{ref} and {this} are pretty much the same",
}
MIXED = (
    "{a}, and {b}|{a}; {b}|on the one hand, {a}; on the other hand, {b}"
    "|{a}, and at the same time {b}"
)
NEITHER = (
    "{subj} {be} not {good}, but {it} {be}n't {bad} either|{subj} {be} neither {good} nor {bad}"
    "|I wouldn't call {subj} {good}, but I wouldn't call {it} {bad} either"
)
PLAIN = (
    "{fact} and {fact2}|{arrival}, and it does what it says|{fact}, and {mild}|{mild}, {hedge}"
    "|{fact}"
)
HEDGE = "I guess|for the price|as far as I can tell"
OPENER = "honestly|so far|overall|to be fair"
VERDICTS = {
    "positive": "I would recommend it|it was worth the money|I would pay for it again",
    "negative": "I would not recommend it|it was not worth the money|I wouldn't pay for it again",
    "neutral": "I'd recommend it only at a lower price|I'm not sure it was worth the money"
    "|I might pay for it again if the price drops",
}


@dataclass(frozen=True)
class Product:
    """One reviewable thing with its vocabulary."""

    name: str
    acquired: str
    aspects: tuple[tuple[str, bool], ...]  # (phrase, is_plural)
    events: dict[str, str]  # polarity -> "|"-separated event clauses
    facts: tuple[str, ...]


def parse_products(table: str) -> tuple[Product, ...]:
    """Parse the product table into Product records."""
    products = []
    for block in table.strip().split("# ")[1:]:
        header, aspects, good, bad, facts = block.strip().splitlines()
        name, _, acquired = header.rstrip(")").partition(" (")
        parsed = tuple((a.rstrip("*"), a.endswith("*")) for a in aspects.split("|"))
        events = {"positive": good[1:], "negative": bad[1:]}
        products.append(Product(name, acquired, parsed, events, tuple(facts[1:].split("|"))))
    return tuple(products)


PRODUCTS = parse_products(_PRODUCT_TABLE)


class Review:
    """The random state of one review: product, tense, and the aspects already mentioned."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.product = rng.choice(PRODUCTS)
        self.past = rng.random() < 0.5
        self.used: set[str] = set()
        # Shipped goods get delivery remarks; rooms, meals and apps do not.
        self.shipped = self.product.acquired == "bought"

    def pick(self, options: str | Sequence[str]) -> str:
        return self.rng.choice(options.split("|") if isinstance(options, str) else options)

    def aspect(self) -> dict[str, str]:
        """Placeholders for a fresh aspect: its phrase, "to be" forms and pronoun."""
        # A fresh aspect per clause, so "A but B" never contradicts itself about one thing.
        fresh = [a for a in self.product.aspects if a[0] not in self.used]
        phrase, plural = self.rng.choice(fresh or self.product.aspects)
        self.used.add(phrase)
        singular = "was" if self.past else "is"
        be = ("were" if self.past else "are") if plural else singular
        return dict(subj=f"the {phrase}", be=be, be1=singular, it="they" if plural else "it")

    def adjective(self, polarity: str) -> str:
        return self.pick(POSITIVE_ADJ if polarity == "positive" else NEGATIVE_ADJ)

    def direct_clause(self, polarity: str) -> str:
        """A clause stating `polarity` outright."""
        if self.rng.random() < 0.3:
            return self.pick(self.product.events[polarity])
        a = self.aspect()
        return f"{a['subj']} {a['be']} {self.pick(INTENSIFIERS)}{self.adjective(polarity)}"

    def negated_clause(self, polarity: str) -> str:
        """A clause reaching `polarity` by negating the opposite adjective."""
        return self.pick(NEGATED).format(adj=self.adjective(opposite(polarity)), **self.aspect())

    def clause(self, polarity: str, negation_rate: float = 0.3) -> str:
        if self.rng.random() < negation_rate:
            return self.negated_clause(polarity)
        return self.direct_clause(polarity)

    def mild_clause(self) -> str:
        a = self.aspect()
        return f"{a['subj']} {a['be']} {self.pick('just |only |')}{self.pick(MILD_ADJ)}"


def opposite(polarity: str) -> str:
    return "negative" if polarity == "positive" else "positive"


def build_simple(r: Review, label: str) -> str:
    return r.clause(label, negation_rate=0.5)


def build_contrast(r: Review, label: str) -> str:
    """Two clauses where the contrast marker decides which one carries the label."""
    win = r.clause(label)
    # A "just okay" losing clause spreads the neutral vocabulary into polar reviews too.
    lose = r.mild_clause() if r.rng.random() < 0.2 else r.clause(opposite(label))
    return r.pick(CONTRAST).format(win=win, lose=lose)


def build_expectation(r: Review, label: str) -> str:
    """Whether the outcome confirmed the stated expectation decides the label."""
    a = r.aspect()
    met = r.rng.random() < 0.5
    start = f"I expected {a['subj']} to be {r.adjective(label if met else opposite(label))}"
    return r.pick(EXPECT_MET if met else EXPECT_MISSED).format(
        start=start, adj=r.adjective(label), **a
    )


def build_comparison(r: Review, label: str) -> str:
    """Comparisons where word order, not vocabulary, decides the label."""
    noun = r.product.name
    refs = (f"the last {noun} I tried", "the one I tried before")
    if r.shipped:  # nobody "had" a restaurant or a hotel room before
        refs += (f"my previous {noun}", f"the {noun} I had before", "the one I had before")
    return r.pick(COMPARE[label]).format(
        this=r.pick((f"this {noun}", "this one")),
        ref=r.pick(refs),
        better=r.pick(BETTER),
        worse=r.pick(WORSE),
    )


def build_mixed(r: Review, label: str) -> str:
    """Opposite clauses joined without a contrast marker: the review is mixed, hence neutral."""
    first, second = r.clause("positive"), r.clause("negative")
    if r.rng.random() < 0.5:
        first, second = second, first
    return r.pick(MIXED).format(a=first, b=second)


def build_neither(r: Review, label: str) -> str:
    good, bad = r.adjective("positive"), r.adjective("negative")
    return r.pick(NEITHER).format(good=good, bad=bad, **r.aspect())


def build_plain(r: Review, label: str) -> str:
    """Facts and lukewarm remarks without any verdict."""
    fact, fact2 = r.rng.sample(r.product.facts, 2)
    arrival = f"it {r.pick(ARRIVAL)}" if r.shipped else "it matched the description"
    return r.pick(PLAIN).format(
        fact=fact, fact2=fact2, arrival=arrival, mild=r.mild_clause(), hedge=r.pick(HEDGE)
    )


# Label -> (builders, relative weights); the weights set how much a bag of words can exploit.
_POLAR = ((build_simple, build_contrast, build_expectation, build_comparison), (25, 35, 20, 20))
BUILDERS: dict[str, tuple[tuple[Callable[[Review, str], str], ...], tuple[int, ...]]] = {
    "positive": _POLAR,
    "negative": _POLAR,
    "neutral": ((build_mixed, build_neither, build_plain, build_comparison), (30, 25, 30, 15)),
}


def compose_review(r: Review, label: str) -> str:
    """Wrap one core statement in optional, label-neutral or label-consistent framing."""
    builders, weights = BUILDERS[label]
    core = r.rng.choices(builders, weights)[0](r, label)
    if r.rng.random() < 0.15:
        core = f"{r.pick(OPENER)}, {core}"
    sentences = [core]
    if r.rng.random() < 0.45:
        noun, verb = r.product.name, r.product.acquired
        intro = [f"I {verb} this {noun} {r.pick(WHEN)}", f"some thoughts on this {noun}"]
        # Facts and delivery notes also open polar reviews, so they do not mark "neutral".
        intro.append(r.pick(r.product.facts))
        if r.shipped:
            intro += [f"delivery was {r.pick('fine|okay|quick|slow')}", f"it {r.pick(ARRIVAL)}"]
        opening = r.pick(intro)
        if opening not in core:  # a fact may already be the whole core
            sentences.insert(0, opening)
    if r.rng.random() < 0.2:
        sentences.append(r.pick(VERDICTS[label]))
    return " ".join(s[:1].upper() + s[1:] + "." for s in sentences)


def generate_examples(seed: int, count: int) -> list[dict[str, str]]:
    """`count` distinct labelled reviews, in a seed-determined order."""
    rng = random.Random(seed)
    seen: set[str] = set()
    examples: list[dict[str, str]] = []
    while len(examples) < count:
        label = rng.choices(LABELS, LABEL_WEIGHTS)[0]
        text = compose_review(Review(rng), label)
        # Global dedupe is what keeps test texts out of train.
        if text in seen or not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            continue
        seen.add(text)
        examples.append({"text": text, "label": label})
    return examples


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` in one step so readers never see a half-written split."""
    if path.is_file() and path.read_bytes() == data:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_demo_dataset(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 2400,
    n_validation: int = 400,
    n_test: int = 600,
) -> dict[str, Path]:
    """Write train/validation/test JSONL splits ({"text", "label"} per line) into `out_dir`.

    The same seed and sizes always give byte-identical files; no text occurs in two splits.
    Existing identical files are left untouched. Returns split name -> file path.
    """
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    if any(n < 0 for n in sizes.values()):
        raise ValueError(f"split sizes must be non-negative, got {sizes}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = generate_examples(seed, sum(sizes.values()))
    paths: dict[str, Path] = {}
    start = 0
    for split, n in sizes.items():
        lines = (json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples[start : start + n])
        paths[split] = out / f"{split}.jsonl"
        write_atomically(paths[split], "".join(lines).encode("utf-8"))
        start += n
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: write the demo splits and print one line per file."""
    parser = argparse.ArgumentParser(description="Generate the ftlaunch demo sentiment dataset.")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=2400)
    parser.add_argument("--n-validation", type=int, default=400)
    parser.add_argument("--n-test", type=int, default=600)
    args = parser.parse_args(argv)
    paths = write_demo_dataset(args.out, args.seed, args.n_train, args.n_validation, args.n_test)
    for split, path in paths.items():
        rows = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"{split}: {path} ({rows} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
