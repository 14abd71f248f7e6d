"""A deterministic synthetic knowledge world: the data of the CPU default (DESIGN.md §4).

Made-up entities with made-up facts, a passage corpus, single- and two-hop questions in the
Search-R1 parquet format; the text of the policy's prior (warm-start demonstrations, copy drills) is
in zs_ray/prior_texts.py. Everything follows from one seed: the same seed gives byte-identical files.

What the world looks like (choices follow /work/shared/LEARNING_NOTES.md):
- Names are two *name syllables* ("ka lo"); syllable-valued facts are two *value syllables*
  ("dar kel"); years are four space-separated digits ("1 8 2 1") so every digit is its own token
  (the notes found digit answers learnable and rare whole-word answers not). Syllables are short
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

No Ray here: plain functions over text; `build_world` writes the files, `build_world_assets` also
trains the tokenizer and creates the tiny policy and simulator models.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from typing import Mapping, Optional

from .protocol import make_prompt

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
_NAME_SET = set(NAME_SYLLABLES)
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
    """Sizes and rates of a world. Defaults: the CPU default (LEARNING_NOTES: ~1000 / ~100 entities)."""

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
    """A corpus row as the BM25 backend shows it ("Title: text", zs_ray.retrieval.format_passage)."""
    from .retrieval import format_passage, parse_passage

    _, title, text = parse_passage(row)
    return format_passage(title, text)


def search_query(name: str, attr: str) -> str:
    return f"{name} {attr}"


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def _write_jsonl(path: str, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n")


def searchr1_rows(questions: list[Question]) -> list[dict]:
    """Rows in the exact Search-R1 parquet layout (field order as in its released nq parquet)."""
    return [{
        "id": q.id, "question": q.question, "golden_answers": list(q.answers), "data_source": q.data_source,
        "prompt": [{"content": make_prompt(q.question), "role": "user"}], "ability": ABILITY,
        "reward_model": {"ground_truth": {"target": list(q.answers)}, "style": "rule"},
        "extra_info": {"index": i, "split": q.split},
    } for i, q in enumerate(questions)]


def _searchr1_schema():
    import pyarrow as pa

    s = pa.string()
    return pa.schema([
        ("id", s), ("question", s), ("golden_answers", pa.list_(s)), ("data_source", s),
        ("prompt", pa.list_(pa.struct([("content", s), ("role", s)]))), ("ability", s),
        ("reward_model", pa.struct([("ground_truth", pa.struct([("target", pa.list_(s))])), ("style", s)])),
        ("extra_info", pa.struct([("index", pa.int64()), ("split", s)])),
    ])


def write_parquet(path: str, questions: list[Question]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(searchr1_rows(questions), schema=_searchr1_schema()), path)


def _params_from(cfg_or_kwargs) -> tuple[Optional[str], WorldParams]:
    """Accept a mapping (dict / OmegaConf node) or keyword args; unknown keys are an error."""
    d = dict(cfg_or_kwargs)
    out_dir = d.pop("out_dir", None)
    known = {f.name for f in dataclasses.fields(WorldParams)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown world parameters {sorted(unknown)}; known: {sorted(known) + ['out_dir']}")
    return out_dir, WorldParams(**d)


def build_world(out_dir=None, **kwargs) -> dict[str, str]:
    """Write the world to `out_dir`: corpus.jsonl, train/test.parquet, warmstart.jsonl, pretrain.txt,
    questions.jsonl, entities.jsonl, world.json. Returns {name: path}.

    `build_world("dir", seed=0, n_entities=...)` or `build_world({"out_dir": "dir", "seed": 0, ...})`.
    """
    if dataclasses.is_dataclass(out_dir):  # a WorldParams (or a config dataclass with these fields)
        out_dir = dataclasses.asdict(out_dir)
    if isinstance(out_dir, Mapping):  # a dict or an OmegaConf node
        out_dir, p = _params_from({**dict(out_dir), **kwargs})
    else:
        _, p = _params_from(kwargs)
    if not out_dir:
        raise ValueError("build_world needs out_dir")
    from .prior_texts import PRETRAIN_SEPARATOR, pretrain_texts, warmstart_demos
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    world = make_world(p)
    paths = {k: os.path.join(out_dir, f) for k, f in [
        ("corpus", "corpus.jsonl"), ("train", "train.parquet"), ("test", "test.parquet"),
        ("warmstart", "warmstart.jsonl"), ("pretrain", "pretrain.txt"), ("questions", "questions.jsonl"),
        ("entities", "entities.jsonl"), ("summary", "world.json")]}

    _write_jsonl(paths["corpus"], world.passages)
    write_parquet(paths["train"], world.split("train"))
    write_parquet(paths["test"], world.split("test"))
    _write_jsonl(paths["questions"], (dataclasses.asdict(q) for q in world.questions))
    _write_jsonl(paths["entities"], (dataclasses.asdict(e) for e in world.entities))
    demos = warmstart_demos(world, "train", with_segments=True)
    _write_jsonl(paths["warmstart"], ({
        "id": q.id, "question": q.question, "golden_answers": q.answers, "data_source": q.data_source,
        "prompt": prompt, "response": "".join(t for t, _ in segs), "n_searches": len(q.hops)}
        for q, prompt, segs in demos))
    with open(paths["pretrain"], "w", encoding="utf-8") as f:
        f.write(PRETRAIN_SEPARATOR.join(pretrain_texts(p.n_pretrain, p.seed, p.topk)))
    with open(paths["summary"], "w") as f:
        json.dump(world_summary(world), f, indent=1)
    return paths


def world_summary(world: World) -> dict:
    def count(split, src=None):
        return sum(1 for q in world.split(split) if src is None or q.data_source == src)

    return {
        "params": dataclasses.asdict(world.params),
        "n_entities": len(world.entities),
        "n_question_entities": {s: sum(1 for e in world.entities if e.pool == s and e.role == "question")
                                for s in ("train", "test")},
        "n_distractor_entities": sum(1 for e in world.entities if e.role == "distractor"),
        "n_passages": len(world.passages), "n_facts": len(world.facts),
        "n_questions": {s: {"total": count(s), SOURCE_1HOP: count(s, SOURCE_1HOP), SOURCE_2HOP: count(s, SOURCE_2HOP)}
                        for s in ("train", "test")},
        "name_syllables": NAME_SYLLABLES, "value_syllables": VALUE_SYLLABLES,
        "corpus_sha256": hashlib.sha256("".join(json.dumps(p) for p in world.passages).encode()).hexdigest(),
    }


def load_world(out_dir: str) -> World:
    """The World behind a built directory (regenerated from the parameters in world.json)."""
    with open(os.path.join(out_dir, "world.json")) as f:
        return make_world(WorldParams(**json.load(f)["params"]))


# ---------------------------------------------------------------------------------------------
# Tokenizer and tiny models
# ---------------------------------------------------------------------------------------------

def tokenizer_texts(world: World, topk: Optional[int] = None) -> list[str]:
    """Corpus, prompts and demonstrations: what the world's tokenizer must encode compactly."""
    from .prior_texts import warmstart_demos

    # The whole syllable inventory and the digits, so each is one token even in a small world.
    texts = [" ".join(WORDS)] * 20
    texts += [p["contents"] for p in world.passages]
    texts += [q.question for q in world.questions]  # the prompt template itself is in protocol_texts()
    texts += [r for _, r in warmstart_demos(world, "train", topk=topk)]
    return texts


def token_stats(tokenizer, world: World, n: int = 200) -> dict:
    """Tokens of a typical chat-templated prompt and of 1-hop / 2-hop demonstrations."""
    from .prior_texts import warmstart_demos

    demos = warmstart_demos(world, "train", with_segments=True)[:n]
    stats: dict = {}
    for src in (SOURCE_1HOP, SOURCE_2HOP):
        sel = [(q, p, s) for q, p, s in demos if q.data_source == src]
        if not sel:
            continue
        p_len = [len(tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=True,
                                                   add_generation_prompt=True, return_dict=False)) for _, p, _ in sel]
        r_len = [len(tokenizer("".join(t for t, _ in s))["input_ids"]) for _, _, s in sel]
        stats[src] = {"prompt_tokens_mean": sum(p_len) / len(p_len), "response_tokens_mean": sum(r_len) / len(r_len),
                      "total_tokens_max": max(a + b for a, b in zip(p_len, r_len))}
    stats["multi_token_syllables"] = [w for w in WORDS if len(tokenizer(" " + w)["input_ids"]) != 1]
    return stats


def build_world_assets(out_dir: str, seed: int = 0, vocab_size: int = 1000, policy_arch: str = "llama",
                       simulator_arch: str = "qwen2", policy_size: str = "policy", **world_kwargs) -> dict[str, str]:
    """The world files plus a tokenizer trained on them and the tiny policy and simulator models."""
    from transformers import AutoTokenizer

    from .tiny_models import make_tiny_model, train_tokenizer

    paths = build_world(os.path.join(out_dir, "world"), seed=seed, **world_kwargs)
    world = load_world(os.path.join(out_dir, "world"))
    tok_dir = os.path.join(out_dir, "tokenizer")
    train_tokenizer(tokenizer_texts(world), tok_dir, vocab_size=vocab_size)
    paths["tokenizer"] = tok_dir
    paths["policy"] = make_tiny_model(tok_dir, os.path.join(out_dir, "policy"), size=policy_size,
                                      arch=policy_arch, seed=seed)
    paths["simulator"] = make_tiny_model(tok_dir, os.path.join(out_dir, "simulator"), size="simulator",
                                         arch=simulator_arch, seed=seed + 1)
    stats = token_stats(AutoTokenizer.from_pretrained(tok_dir), world)
    paths["token_stats"] = os.path.join(out_dir, "token_stats.json")
    with open(paths["token_stats"], "w") as f:
        json.dump(stats, f, indent=1)
    return paths


__all__ = [
    "WorldParams", "Entity", "Question", "World", "make_world", "build_world", "build_world_assets", "load_world",
    "searchr1_rows", "write_parquet", "doc_text",
    "fact_sentence", "passage_contents", "tokenizer_texts", "token_stats", "world_summary",
    "NAME_SYLLABLES", "VALUE_SYLLABLES", "WORDS", "SOURCE_1HOP", "SOURCE_2HOP",
]
