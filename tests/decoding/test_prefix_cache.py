"""The prefix cache: cached KV equals encoding from scratch, engines decode the same tokens
with it on and off, LRU eviction by bytes, no shared prefix, threads, no aliasing; a group's
prompts start from their longest stored prefix, whole prompts stored by earlier groups
included (a child's prompt extending one of them)."""

from __future__ import annotations

import sys
import threading

import pytest
import torch
from transformers import DynamicCache

from seedq.decoding import kvcache
from seedq.decoding.config import EngineConfig
from seedq.decoding.engines.base import encode_prefix, prefill_group, shared_prefix_length
from seedq.decoding.factory import generator_from_models
from seedq.decoding.loading import LoadedModel
from seedq.decoding.options import DecodingOptions, OptionsError
from seedq.decoding.prefix_cache import PrefixCache, PrefixCaches
from seedq.decoding.types import GroupRequest, GroupResult, SamplingParams

FEW_SHOT = ("Question 1: she sold 12 apples each day and bought two more. how many eggs "
            "does she have? answer: first we add 12 + 2 = 14. Question 2: ")
PARENT = FEW_SHOT + "he has four red blocks on the table. how many blocks"
CHILD = PARENT + " are clear? step one: pick up the red block"
UNRELATED = "the blue block is on top of the orange block"


def ids(target: LoadedModel, text: str) -> list[int]:
    return target.tokenizer.encode(text)


def full_cache(target: LoadedModel, tokens: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """No prefix cache: every token encoded in one forward; logits of every position."""
    cache = kvcache.new_cache()
    logits = target.model.forward_chain(tokens, cache)
    return cache, logits


def layer_tensors(cache: DynamicCache) -> list[torch.Tensor]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def assert_same_kv(a: DynamicCache, b: DynamicCache, length: int, exact: bool = False) -> None:
    for x, y in zip(layer_tensors(a), layer_tensors(b), strict=True):
        assert x.shape[-2] >= length and y.shape[-2] >= length
        if exact:
            assert torch.equal(x[..., :length, :], y[..., :length, :])
        else:
            torch.testing.assert_close(x[..., :length, :], y[..., :length, :],
                                       rtol=1e-5, atol=1e-5)


def test_cached_logits_equal_uncached(target: LoadedModel) -> None:
    parent, child = ids(target, PARENT), ids(target, CHILD)
    assert child[: len(parent) - 1] == parent[: len(parent) - 1]
    prefix = PrefixCache(64 * 2**20)
    _, reused = encode_prefix(target.model, parent[:-1], prefix)
    assert reused == 0
    cache, reused = encode_prefix(target.model, child[:-1], prefix)
    assert 0 < reused < len(child) - 1
    assert kvcache.cache_length(cache) == len(child) - 1
    logits = target.model.forward_chain(child[-1:], cache)  # the caller's first forward
    reference_cache, reference = full_cache(target, child)
    torch.testing.assert_close(logits[-1], reference[-1], rtol=1e-5, atol=1e-5)
    assert_same_kv(cache, reference_cache, len(child))
    # a third lookup finds the whole child prefix: nothing left to encode
    again, reused = encode_prefix(target.model, child[:-1], prefix)
    assert reused == len(child) - 1
    assert_same_kv(again, reference_cache, len(child) - 1)


def test_prompt_sharing_nothing(target: LoadedModel) -> None:
    prefix = PrefixCache(64 * 2**20)
    encode_prefix(target.model, ids(target, PARENT), prefix)
    other = ids(target, UNRELATED)
    assert other[0] != ids(target, PARENT)[0]
    length, cache = prefix.match(other)
    assert length == 0 and kvcache.cache_length(cache) == 0
    cache, reused = encode_prefix(target.model, other[:-1], prefix)
    logits = target.model.forward_chain(other[-1:], cache)
    _, reference = full_cache(target, other)
    assert reused == 0
    torch.testing.assert_close(logits[-1], reference[-1], rtol=1e-5, atol=1e-5)
    assert prefix.stats().nodes == 2  # two disjoint entries under the root


def test_radix_shares_prefixes_and_counts_bytes(target: LoadedModel) -> None:
    parent, child = ids(target, PARENT), ids(target, CHILD)
    cache, _ = full_cache(target, child)
    prefix = PrefixCache(64 * 2**20)
    prefix.insert(parent[:-1], cache)
    prefix.insert(child[:-1], cache)  # shares parent[:-1]: only the rest is stored
    per_token = kvcache.cache_bytes(cache) // len(child)
    stats = prefix.stats()
    assert stats.bytes == per_token * (len(child) - 1)
    # an entry diverging inside an edge splits it: still one copy of the common part
    sibling = parent[:-3] + [t for t in ids(target, UNRELATED)[:4]]
    sibling_cache, _ = full_cache(target, sibling)
    prefix.insert(sibling, sibling_cache)
    assert prefix.stats().bytes == per_token * (len(child) - 1 + 4)
    assert prefix.stats().nodes == 4  # common part, parent's tail, child's tail, sibling's
    for tokens in (parent[:-1], child[:-1]):
        length, copy = prefix.match(tokens)
        assert length == len(tokens)
        assert_same_kv(copy, cache, length, exact=True)
    # the sibling: the common part stored first (from the child's cache), then its own tail
    # (two forwards of different lengths need not agree to the last bit: compare each part
    # with the cache it was copied from)
    length, copy = prefix.match(sibling)
    common = len(parent) - 3
    assert length == len(sibling)
    assert_same_kv(copy, cache, common, exact=True)
    for x, y in zip(layer_tensors(copy), layer_tensors(sibling_cache), strict=True):
        assert torch.equal(x[..., common:length, :], y[..., common:length, :])


def test_lru_eviction_under_a_tiny_limit(target: LoadedModel) -> None:
    texts = ["red blocks on the table", "she sold eggs", "how many apples", "7 + 5 = 12"]
    entries = [ids(target, t) for t in texts]
    assert len({e[0] for e in entries}) == len(entries)  # disjoint: one node each
    caches = [full_cache(target, e)[0] for e in entries]
    sizes = [kvcache.cache_bytes(c) for c in caches]
    prefix = PrefixCache(sizes[0] + sizes[1] + sizes[2] // 2)  # room for two entries
    prefix.insert(entries[0], caches[0])
    prefix.insert(entries[1], caches[1])
    assert prefix.stats().bytes == sizes[0] + sizes[1]
    assert prefix.match(entries[0])[0] == len(entries[0])  # 0 is now more recent than 1
    prefix.insert(entries[2], caches[2])  # over the limit: the least recently used (1) goes
    assert [prefix.match(e)[0] for e in entries[:3]] == [len(entries[0]), 0, len(entries[2])]
    assert prefix.stats().bytes == sizes[0] + sizes[2] <= prefix.limit_bytes
    assert prefix.stats().evictions == 1
    prefix.insert(entries[3], caches[3])  # now 0 is the oldest (2 was matched after it)
    assert [prefix.match(e)[0] > 0 for e in entries] == [False, False, True, True]
    huge = PrefixCache(sizes[0] // 2)  # an entry larger than the limit is not stored
    huge.insert(entries[0], caches[0])
    assert huge.stats().bytes == 0 and huge.match(entries[0])[0] == 0


def test_eviction_keeps_the_shared_beginning(target: LoadedModel) -> None:
    """Leaves go first: evicting a child's tail keeps the parent's prefix usable."""
    parent, child = ids(target, PARENT), ids(target, CHILD)
    cache, _ = full_cache(target, child)
    per_token = kvcache.cache_bytes(cache) // len(child)
    prefix = PrefixCache(per_token * (len(parent) + 2))
    prefix.insert(parent[:-1], cache)
    prefix.insert(child[:-1], cache)  # too much: the child's tail (the newest leaf) goes
    assert prefix.match(child[:-1])[0] == len(parent) - 1
    assert prefix.stats().bytes == per_token * (len(parent) - 1)


def test_callers_cannot_mutate_cached_entries(target: LoadedModel) -> None:
    parent = ids(target, PARENT)
    prefix = PrefixCache(64 * 2**20)
    encode_prefix(target.model, parent[:-1], prefix)
    _, first = prefix.match(parent[:-1])
    snapshot = [t.clone() for t in layer_tensors(first)]
    with torch.inference_mode():
        for tensor in layer_tensors(first):
            tensor.mul_(0.0)  # scribble on the copy in place
    target.model.forward_chain(parent[-1:], first)  # and extend it, as an engine does
    _, second = prefix.match(parent[:-1])
    for got, expected in zip(layer_tensors(second), snapshot, strict=True):
        assert torch.equal(got, expected)


def _hammer(prefix: PrefixCache, base: list[int], prompts: list[list[int]],
            references: list[DynamicCache], threads: int = 4) -> list[str]:
    """Threads inserting and matching overlapping prompts; returns what went wrong."""
    errors: list[str] = []

    def work(offset: int) -> None:
        for step in range(60):
            k = (offset + step) % len(prompts)
            cut = len(base) - 4 + step % 9  # cuts inside and past the shared part
            prefix.insert(prompts[k][:cut], references[k])
            length, copy = prefix.match(prompts[k])
            for x, y in zip(layer_tensors(copy), layer_tensors(references[k]), strict=False):
                if x.shape[-2] != length or not torch.equal(x, y[..., :length, :]):
                    errors.append(f"thread {offset} step {step}: wrong KV")
                    return

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    nodes = prefix._iter_nodes()
    stats = prefix.stats()
    if stats.nodes != len(nodes) or stats.bytes != sum(n.nbytes for n in nodes):
        errors.append(f"accounting: {stats} vs {len(nodes)} nodes")
    if stats.bytes > prefix.limit_bytes:
        errors.append(f"{stats.bytes} bytes over the limit {prefix.limit_bytes}")
    return errors


def test_concurrent_use_from_threads(target: LoadedModel) -> None:
    base = ids(target, FEW_SHOT)
    prompts = [base + ids(target, f" {w} blocks are on the table")[:6]
               for w in ("red", "two", "she", "how", "the", "a")]
    references = [full_cache(target, p)[0] for p in prompts]
    per_token = kvcache.cache_bytes(references[0]) // len(prompts[0])
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that races show up
    try:
        for _ in range(4):  # without the lock, each round fails more often than not
            prefix = PrefixCache(per_token * (len(base) + 12))  # constant eviction, splits
            assert _hammer(prefix, base, prompts, references) == []
    finally:
        sys.setswitchinterval(interval)


def test_limit_setting() -> None:
    def limit(env: dict[str, str]) -> int:
        return DecodingOptions.from_env(env).prefix_cache_bytes

    assert limit({}) == 512 * 2**20 == PrefixCaches.default().target.limit_bytes
    assert limit({"SEEDQ_PREFIX_CACHE_MB": "0"}) == 0
    assert limit({"SEEDQ_PREFIX_CACHE_MB": "1.5"}) == 3 * 2**19
    for bad in ("-1", "lots"):
        with pytest.raises(OptionsError, match="SEEDQ_PREFIX_CACHE_MB"):
            limit({"SEEDQ_PREFIX_CACHE_MB": bad})
    disabled = PrefixCache(0)
    disabled.insert([1, 2, 3], DynamicCache())
    assert disabled.match([1, 2, 3])[0] == 0 and not disabled.enabled


def test_insert_copies_its_source(target: LoadedModel) -> None:
    """What an engine does to its own cache after storing it (decode on, roll back, scribble)
    never reaches the stored entry."""
    parent = ids(target, PARENT)
    cache, _ = full_cache(target, parent)
    reference = kvcache.clone(cache)
    prefix = PrefixCache(64 * 2**20)
    prefix.insert(parent, cache)
    with torch.inference_mode():
        for tensor in layer_tensors(cache):
            tensor.mul_(0.0)
    target.model.forward_chain(parent[:3], cache)
    kvcache.crop(cache, 2)
    length, copy = prefix.match(parent)
    assert length == len(parent)
    assert_same_kv(copy, reference, length, exact=True)


def _prefill_and_store(target: LoadedModel, prompts: list[list[int]], prefix: PrefixCache
                       ) -> tuple[list[int], list[torch.Tensor]]:
    """An engine's prefill of one group: start each prompt (prefill_group), feed its rest
    (the first forward), store the whole prompt (as store_prompts does). Returns each
    prompt's reused tokens and last logits."""
    reused, logits = [], []
    for (start, n), tokens in zip(prefill_group(target.model, prompts, prefix), prompts,
                                  strict=True):
        logits.append(target.model.forward_chain(tokens[start.length:], start.cache)[-1])
        reused.append(n)
        assert kvcache.cache_length(start.cache) == len(tokens)
    for (start, _), tokens in zip(prefill_group(target.model, prompts, None), prompts,
                                  strict=True):  # (a second, uncached prefill to store from)
        target.model.forward_chain(tokens[start.length:], start.cache)
        prefix.insert(tokens, start.cache)
    return reused, logits


def test_child_extending_a_stored_prompt_reuses_it(target: LoadedModel) -> None:
    """A group of distinct prompts (one node's evaluations, say) shares only a short
    prefix; once each whole prompt is stored, a later prompt extending one of them starts
    from all of it, and its logits are those of encoding it from scratch."""
    group = [ids(target, PARENT + " are on the table"), ids(target, PARENT + " is red")]
    shared = shared_prefix_length(group)
    child = ids(target, PARENT + " are on the table. step one: pick up the red block")
    assert child[: len(group[0])] == group[0]
    prefix = PrefixCache(64 * 2**20)
    reused, logits = _prefill_and_store(target, group, prefix)
    assert reused == [0, 0]  # nothing cached before, and siblings do not count each other
    for tokens, got in zip(group, logits, strict=True):
        torch.testing.assert_close(got, full_cache(target, tokens)[1][-1], rtol=1e-5,
                                   atol=1e-5)
    (reused_child,), (child_logits,) = _prefill_and_store(target, [child], prefix)
    assert reused_child == len(group[0]) > shared + 1  # the whole sibling, not the prefix
    reference_cache, reference = full_cache(target, child)
    torch.testing.assert_close(child_logits, reference[-1], rtol=1e-5, atol=1e-5)
    # the same child again: everything but its last token
    (start, again), = prefill_group(target.model, [child], prefix)
    assert again == start.length == len(child) - 1
    assert_same_kv(start.cache, reference_cache, len(child) - 1)
    # the stored group's prompts still match whole (the child split nothing away)
    assert [prefix.longest(p) for p in group] == [len(p) for p in group]


def test_group_prompts_start_where_each_is_cached(target: LoadedModel) -> None:
    """In one group, a prompt stored further than the group's shared prefix starts from its
    own copy, the others from the shared prefix; an eviction between the lookup and the
    copy only shortens the copy."""
    stored = ids(target, CHILD)
    cache, _ = full_cache(target, stored)
    prefix = PrefixCache(64 * 2**20)
    prefix.insert(stored, cache)
    group = [ids(target, CHILD + " then"), ids(target, PARENT + " is red"), stored]
    shared = shared_prefix_length(group)
    starts = prefill_group(target.model, group, prefix)
    assert [n for _, n in starts] == [len(stored), shared, len(stored) - 1]
    assert [s.length for s, _ in starts] == [len(stored), shared, len(stored) - 1]
    for (start, _), tokens in zip(starts, group, strict=True):
        assert kvcache.cache_length(start.cache) == start.length
        logits = target.model.forward_chain(tokens[start.length:], start.cache)[-1]
        torch.testing.assert_close(logits, full_cache(target, tokens)[1][-1], rtol=1e-5,
                                   atol=1e-5)


# the engines whose every sequence stores its whole prompt once prefilled (ar and the round
# batcher store only their groups' shared prefixes until they call store_prompts)
STORES_PROMPTS = {"ar": False, "sd": True, "mcsd": True, "seed": True, "batch": True,
                  "batch-group": False, "seed-scheduler": True}
GROUPS = (
    (PARENT, PARENT, PARENT),  # N samples of one prompt
    (CHILD, CHILD + " then", PARENT + " are on the table"),  # children of that node
    (UNRELATED, UNRELATED + " and"),  # shares nothing with the others
    (CHILD,),  # group 2 stored CHILD whole (else: group 2's common prefix)
    (CHILD + " then the blue block",),  # extends group 2's second prompt
    (CHILD,),  # finds all of it but the last token, which the first forward feeds
)


def _tree_of_groups(engine: tuple[EngineConfig, DecodingOptions], target: LoadedModel,
                    draft: LoadedModel | None, limit: int
                    ) -> tuple[list[GroupResult], PrefixCaches]:
    caches = PrefixCaches.with_limit(limit)
    config, options = engine
    generator = generator_from_models(config, target, draft, caches, options=options)
    params = SamplingParams(max_new_tokens=10)
    try:
        return [generator.run(GroupRequest(g, params)) for g in GROUPS], caches
    finally:
        generator.close()


def _engine_config(engine: str) -> tuple[EngineConfig, DecodingOptions]:
    """``batch-group``/``seed-scheduler``: batch/seed outside the round batcher."""
    outside = engine in ("batch-group", "seed-scheduler")
    name = {"batch-group": "batch", "seed-scheduler": "seed"}.get(engine, engine)
    return EngineConfig(engine=name, target="tiny",
                        draft="tiny-draft" if name in ("sd", "mcsd", "seed") else None
                        ), DecodingOptions(round_batcher=not outside)


@pytest.mark.parametrize("engine", list(STORES_PROMPTS))
def test_engines_identical_with_cache_on_and_off(engine: str, target: LoadedModel,
                                                 close_draft: LoadedModel) -> None:
    config = _engine_config(engine)
    draft = close_draft if config[0].draft else None
    off, _ = _tree_of_groups(config, target, draft, 0)
    on, caches = _tree_of_groups(config, target, draft, 64 * 2**20)
    for a, b in zip(off, on, strict=True):
        assert [s.token_ids for s in a.sequences] == [s.token_ids for s in b.sequences]
    reused = [[s.metrics.reused_prompt_tokens for s in r.sequences] for r in on]
    assert all(s.metrics.reused_prompt_tokens == 0 for r in off for s in r.sequences)
    assert reused[0] == [0, 0, 0] and min(reused[1]) > 0 and reused[2] == [0, 0]
    child = ids(target, CHILD)
    group2 = [target.tokenizer.encode(p) for p in GROUPS[1]]
    extended = ids(target, GROUPS[4][0])
    assert extended[: len(group2[1])] == group2[1] and len(group2[1]) > len(child)
    if STORES_PROMPTS[engine]:
        assert reused[3] == [len(child) - 1]  # group 2's first prompt (less its last token)
        assert reused[4] == [len(group2[1])]  # group 2's second prompt, whole
    else:
        assert reused[3] == [shared_prefix_length(group2)]
        assert reused[4] == [len(child) - 1]  # what group 3 stored
    assert reused[5] == [len(child) - 1]
    assert on[5].sequences[0].metrics.prompt_tokens == len(child)
    if draft is not None:
        drafted, verified = caches.draft.stats().reused_tokens, caches.target.stats().reused_tokens
        if engine == "seed":  # in the round the draft KV lives in its slots, prompts unstored
            assert 0 < drafted <= verified
        else:
            assert drafted == verified > 0


@pytest.mark.parametrize("engine", ["sd", "batch"])
def test_engines_correct_under_a_tiny_limit(engine: str, target: LoadedModel,
                                            close_draft: LoadedModel) -> None:
    """A limit of a few prompts' KV: entries are evicted all along, the tokens are those
    of decoding without the cache, and the cache stays under its limit."""
    config = _engine_config(engine)
    draft = close_draft if config[0].draft else None
    child = ids(target, CHILD)
    per_token = kvcache.cache_bytes(full_cache(target, child)[0]) // len(child)
    limit = per_token * (len(child) + 8)
    off, _ = _tree_of_groups(config, target, draft, 0)
    on, caches = _tree_of_groups(config, target, draft, limit)
    for a, b in zip(off, on, strict=True):
        assert [s.token_ids for s in a.sequences] == [s.token_ids for s in b.sequences]
    for cache in (caches.target, caches.draft) if draft is not None else (caches.target,):
        stats = cache.stats()
        assert stats.evictions > 0 and 0 < stats.bytes <= limit
        assert stats.nodes == len(cache._iter_nodes())
        assert stats.bytes == sum(n.nbytes for n in cache._iter_nodes())
    assert sum(s.metrics.reused_prompt_tokens for r in on for s in r.sequences) > 0
