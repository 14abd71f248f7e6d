"""A deterministic synthetic knowledge world: the data of the CPU default.

Made-up entities with made-up facts, a passage corpus, single- and two-hop questions in the
Search-R1 parquet format; the text of the policy's prior (warm-start demonstrations, copy drills) is
in zs_ray/world/prior_texts.py. Everything follows from one seed: the same seed gives byte-identical files.

What the world looks like (each choice is something a tiny model trained from scratch can learn):
- Names are two *name syllables* ("ka lo"); syllable-valued facts are two *value syllables*
  ("dar kel"); years are four space-separated digits ("1 8 2 1") so every digit is its own token
  (digit answers are learnable for a tiny model, rare whole-word answers are not). Syllables are short
  words chosen to avoid English stop words, so BM25 and SQuAD normalisation keep them whole.
- Places have a founder (a person of the same pool) and 2-3 of capital/river/year; persons have
  birthplace, year and school. Some places also name a neighbour place.
- One passage per entity, one fact per sentence in the copyable form `NAME ATTR is V1 V2 .`.
- Distractors: extra entities whose names share a syllable with a question entity (never asked
  about), and passages about the wrong entity (a place's passage names its founder and neighbour),
  so BM25's top-k holds several candidates and the policy must pick the right one.
- Entities are split into a train pool and a test pool; facts only link entities of the same pool,
  so no test question touches an entity any training question mentions.
- Every value string is unique in the corpus: a gold answer appears in its gold passage only.

No Ray here: plain functions over text. zs_ray/world/files.py writes a world to disk (`build_world`) and
builds its tokenizer and tiny models (`build_world_assets`).
"""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from typing import Optional

# ---------------------------------------------------------------------------------------------
# Vocabulary of the world (fixed, independent of the seed, so every world shares one tokenizer)
# ---------------------------------------------------------------------------------------------

# Words a syllable must never be: BM25's English stop words (they would vanish from queries),
# SQuAD's articles (they would vanish from answers) and words of the prompt and templates.
_RESERVED = set("""
a an and are as at be but by for if in into is it no not of on or such that the their then there these
they this to was will with after answer beijing between call can conduct detailed directly engine every
example external find first further get given illustrations information inside knowledge lack many must
needed new provide query question reasoning results return search searched some think time times top
want without you your what need now doc do go he me so we us up ok my
""".split())


def _name_syllables(n: int = 50) -> list[str]:
    """Consonant-vowel syllables ("ka"), vowel-major so every consonant is used."""
    out = [c + v for v in "aeiou" for c in "bdfgklmnprstvz" if c + v not in _RESERVED]
    return out[:n]


def _value_syllables(n: int = 50) -> list[str]:
    """Consonant-vowel-consonant syllables ("dar"): never equal to a name syllable."""
    cands = [c + v + f for c in "bdfgkmnprstvz" for v in "aeiou" for f in "lmnr" if c + v + f not in _RESERVED]
    random.Random(20261123).shuffle(cands)  # fixed seed: the inventory never depends on the world seed
    return sorted(cands[:n])


NAME_SYLLABLES = _name_syllables()
VALUE_SYLLABLES = _value_syllables()
NAME_SET = set(NAME_SYLLABLES)
WORDS = NAME_SYLLABLES + VALUE_SYLLABLES + list("0123456789")  # every one a single token (token_stats)

PLACE, PERSON = "place", "person"
PLACE_OPTIONAL = ("capital", "river", "year")  # a place has a founder and 2-3 of these
PERSON_ATTRS = ("birthplace", "year", "school")
BRIDGE = "founder"  # place -> person: the relation two-hop questions chain through
NEIGHBOUR = "neighbour"  # place -> place: a mention only, never asked about
NAME_VALUED = (BRIDGE, NEIGHBOUR)
SOURCE_1HOP, SOURCE_2HOP = "world_1hop", "world_2hop"
ABILITY = "fact-reasoning"


# ---------------------------------------------------------------------------------------------
# Data classes
# ---------------------------------------------------------------------------------------------

@dataclass
class WorldParams:
    """Sizes and rates of a world. Defaults: the CPU default (~1000 / ~100 entities)."""

    seed: int = 0
    n_entities: int = 1000  # train pool: entities training questions are about
    n_test_entities: int = 100  # test pool: disjoint entities for held-out questions
    person_frac: float = 1 / 3  # share of each pool that are persons (founders)
    distractor_frac: float = 0.15  # extra similar-name entities per question entity (never asked)
    neighbour_frac: float = 0.3  # places whose passage also names a neighbour place
    two_hop_per_place: int = 2  # two-hop questions per place (0 = single-hop only)
    topk: int = 3  # documents per search in demonstrations and drills (= the config's search.topk)
    n_pretrain: int = 12000  # copy drills in pretrain.txt (~ one pass of the quickstart's 3,000 x 8 steps)


@dataclass
class Entity:
    name: str
    kind: str  # "place" | "person"
    pool: str  # "train" | "test"
    role: str  # "question" (questions ask about it) | "distractor"
    facts: dict[str, str]  # attribute -> value, in passage order
    passage_id: str = ""


@dataclass
class Question:
    id: str
    split: str
    question: str
    answers: list[str]
    data_source: str
    hops: list[tuple[str, str]]  # (entity name, attribute) per search, in order
    gold_passage_ids: list[str]  # one per hop; the last one states the answer


@dataclass
class World:
    params: WorldParams
    entities: list[Entity]
    passages: list[dict]  # Search-R1 corpus rows {"id", "contents"}
    questions: list[Question]
    _by_name: dict = field(default_factory=dict, repr=False)
    _by_pid: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._by_name = {e.name: e for e in self.entities}
        self._by_pid = {p["id"]: p for p in self.passages}

    def entity(self, name_or_entity) -> Entity:
        return name_or_entity if isinstance(name_or_entity, Entity) else self._by_name[name_or_entity]

    def facts_for(self, name_or_entity) -> dict[str, str]:
        return dict(self.entity(name_or_entity).facts)

    def passage_for(self, name_or_entity) -> dict:
        return self._by_pid[self.entity(name_or_entity).passage_id]

    def passage(self, passage_id: str) -> dict:
        return self._by_pid[passage_id]

    @property
    def facts(self) -> list[tuple[str, str, str]]:
        """(entity, attribute, value) for every fact in the corpus."""
        return [(e.name, a, v) for e in self.entities for a, v in e.facts.items()]

    def split(self, split: str) -> list[Question]:
        return [q for q in self.questions if q.split == split]


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------

def fact_sentence(name: str, attr: str, value: str) -> str:
    """The one copyable sentence form of a fact."""
    return f"{name} {attr} is {value} ."


def passage_contents(entity: Entity) -> str:
    """Search-R1 corpus `contents`: the quoted title on the first line, then the text."""
    return f'"{entity.name}"\n' + " ".join(fact_sentence(entity.name, a, v) for a, v in entity.facts.items())


class _Values:
    """Draws values without replacement, so every value string is unique in the world."""

    def __init__(self, rng: random.Random):
        self.pairs = [f"{a} {b}" for a in VALUE_SYLLABLES for b in VALUE_SYLLABLES if a != b]
        self.years = [" ".join(str(y)) for y in range(1000, 10000)]
        rng.shuffle(self.pairs)
        rng.shuffle(self.years)

    def draw(self, attr: str) -> str:
        pool = self.years if attr == "year" else self.pairs
        if not pool:
            raise ValueError(f"world too large: no unique {attr!r} values left; lower n_entities")
        return pool.pop()


def _sibling_name(rng: random.Random, name: str, free: set[str]) -> Optional[str]:
    """An unused name sharing one syllable with `name` (a BM25 look-alike)."""
    a, b = name.split()
    cands = sorted(c for c in {f"{a} {x}" for x in NAME_SYLLABLES} | {f"{x} {b}" for x in NAME_SYLLABLES}
                   if c in free)
    return rng.choice(cands) if cands else None


def _make_pool(rng: random.Random, pool: str, n: int, p: WorldParams, names: list[str], free: set[str],
               values: _Values) -> list[Entity]:
    """Question entities of one pool, their facts (linked within the pool only) and distractors."""
    n_person = max(1, round(n * p.person_frac)) if n > 1 else 0
    kinds = [PERSON] * n_person + [PLACE] * (n - n_person)
    ents = [Entity(names.pop(), k, pool, "question", {}) for k in kinds]
    for name in (e.name for e in ents):
        free.discard(name)
    n_dis = round(n * p.distractor_frac)
    for base in [rng.choice(ents) for _ in range(n_dis)]:
        name = _sibling_name(rng, base.name, free)
        if name is not None:
            free.discard(name)
            names.remove(name)
            ents.append(Entity(name, base.kind, pool, "distractor", {}))
    persons = [e for e in ents if e.kind == PERSON and e.role == "question"]
    places = [e for e in ents if e.kind == PLACE and e.role == "question"]
    for e in ents:
        if e.kind == PERSON:
            attrs = list(PERSON_ATTRS)
        else:
            attrs = [BRIDGE] + rng.sample(PLACE_OPTIONAL, rng.choice((2, 3)))
            if len(places) > 1 and rng.random() < p.neighbour_frac:
                attrs.append(NEIGHBOUR)
        rng.shuffle(attrs)  # fact order varies: the policy must find the attribute, not a position
        for attr in attrs:
            if attr == BRIDGE:
                if not persons:
                    continue
                e.facts[attr] = rng.choice(persons).name
            elif attr == NEIGHBOUR:
                e.facts[attr] = rng.choice([x for x in places if x is not e]).name
            else:
                e.facts[attr] = values.draw(attr)
    return ents


def _questions_for(rng: random.Random, ents: list[Entity], split: str, p: WorldParams) -> list[Question]:
    by_name = {e.name: e for e in ents}
    out: list[Question] = []
    for e in (x for x in ents if x.role == "question"):
        for attr, value in e.facts.items():
            if attr in NAME_VALUED:  # a name appears in several passages: not a clean gold answer
                continue
            out.append(Question("", split, f"what is the {attr} of {e.name}?", [value], SOURCE_1HOP,
                                [(e.name, attr)], [e.passage_id]))
        if BRIDGE in e.facts and p.two_hop_per_place > 0:
            founder = by_name[e.facts[BRIDGE]]
            attrs = [a for a in founder.facts if a not in NAME_VALUED]
            for attr in rng.sample(attrs, min(p.two_hop_per_place, len(attrs))):
                out.append(Question("", split, f"what is the {attr} of the founder of {e.name}?",
                                    [founder.facts[attr]], SOURCE_2HOP, [(e.name, BRIDGE), (founder.name, attr)],
                                    [e.passage_id, founder.passage_id]))
    rng.shuffle(out)
    for i, q in enumerate(out):
        q.id = f"{split}_{i}"
    return out


def make_world(params: WorldParams | None = None, **overrides) -> World:
    """Generate the world in memory (no files). Deterministic in `params.seed`."""
    p = dataclasses.replace(params or WorldParams(), **overrides)
    rng = random.Random(p.seed)
    names = [f"{a} {b}" for a in NAME_SYLLABLES for b in NAME_SYLLABLES if a != b]
    rng.shuffle(names)
    need = (p.n_entities + p.n_test_entities) * (1 + p.distractor_frac)
    if need > len(names):
        raise ValueError(f"world too large: {need:.0f} names needed, {len(names)} available")
    free, values = set(names), _Values(rng)
    train = _make_pool(rng, "train", p.n_entities, p, names, free, values)
    test = _make_pool(rng, "test", p.n_test_entities, p, names, free, values)
    entities = train + test
    # Passage ids follow a shuffled order, so pools and roles are not readable from the id.
    order = list(range(len(entities)))
    rng.shuffle(order)
    for pid, i in enumerate(order):
        entities[i].passage_id = str(pid)
    passages = [{"id": e.passage_id, "contents": passage_contents(e)}
                for e in sorted(entities, key=lambda e: int(e.passage_id))]
    questions = _questions_for(rng, train, "train", p) + _questions_for(rng, test, "test", p)
    return World(p, entities, passages, questions)


# ---------------------------------------------------------------------------------------------
# Trajectories: the protocol text of a clean search-then-answer episode
# ---------------------------------------------------------------------------------------------

def doc_text(row: dict) -> str:
    """A corpus row as the BM25 backend shows it ("Title: text", zs_ray.search.retrieval.format_passage)."""
    from zs_ray.search.retrieval import format_passage, parse_passage

    _, title, text = parse_passage(row)
    return format_passage(title, text)


def search_query(name: str, attr: str) -> str:
    return f"{name} {attr}"


def write_rows_jsonl(path: str, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n")


__all__ = [
    "WorldParams", "Entity", "Question", "World", "make_world", "doc_text", "search_query",
    "fact_sentence", "passage_contents",
    "NAME_SYLLABLES", "VALUE_SYLLABLES", "WORDS", "SOURCE_1HOP", "SOURCE_2HOP",
]
