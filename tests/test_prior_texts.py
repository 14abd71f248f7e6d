"""The copy tasks that come before the drills (zs_ray.world.prior_texts): pure text, no models."""
import random

from zs_ray.sft.sft import encode_segments
from zs_ray.world.prior_texts import fact_recall, induction_sequence, pretrain_texts
from zs_ray.world.world import NAME_SYLLABLES, VALUE_SYLLABLES, fact_sentence


def test_induction_sequence_repeats_distinct_words():
    rng, words = random.Random(0), NAME_SYLLABLES + VALUE_SYLLABLES
    for _ in range(200):
        (shown, learn0), (repeat, learn1) = induction_sequence(rng, words)
        assert (learn0, learn1) == (False, True)
        before = shown.split()
        assert before[-1] == ";" and len(set(before[:-1])) == len(before) - 1  # every word once
        seq = repeat.split()
        assert 8 <= len(seq) <= 20 and before[-1 - len(seq):-1] == seq


def test_fact_recall_asks_every_shown_fact_once_and_learns_only_values():
    rng = random.Random(1)
    for drill in pretrain_texts(20, seed=2):
        blocks = fact_recall(rng, drill)
        assert len(blocks) == drill.count("<information>") >= 1
        for segs in blocks:
            docs = segs[0][0]
            assert not segs[0][1] and docs.endswith(" ;")
            keys, values = segs[1::2], segs[2::2]
            assert keys and len(keys) == len(values)
            assert all(not k[1] for k in keys) and all(v[1] for v in values)
            sentences = [f"{k.strip()} {v.strip()}" for (k, _), (v, _) in zip(keys, values)]
            assert len(set(sentences)) == len(sentences)
            for s in sentences:  # each recalled sentence is a fact shown in the documents
                name_attr, value = s[:-2].split(" is ")
                *name, attr = name_attr.split()
                assert fact_sentence(" ".join(name), attr, value) in docs


class _SpaceTokenizer:
    def encode(self, text, add_special_tokens=False):
        return [len(w) for w in text.split()]


def test_encode_segments_masks_per_piece():
    ex = encode_segments(_SpaceTokenizer(), [(" a bb ;", False), (" ccc dddd", True)])
    assert ex.ids == [1, 2, 1, 3, 4] and ex.mask == [0, 0, 0, 1, 1]
