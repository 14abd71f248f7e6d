from zs_ray.sft.sft import encode_chat_example, encode_text_example, sft_train


def test_information_blocks_are_masked(tiny_assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    resp = ("<think> need it </think> <search> capital of zorland </search>\n\n<information>Doc 1: zorland "
            "capital is karova .</information>\n\n<think> ok </think> <answer> karova </answer>")
    ex = encode_chat_example(tok, "what is the capital of zorland?", resp)
    assert len(ex.ids) == len(ex.mask)
    learned = tok.decode([i for i, m in zip(ex.ids, ex.mask) if m])
    ignored = tok.decode([i for i, m in zip(ex.ids, ex.mask) if not m])
    assert "<information>" not in learned and "Doc 1" not in learned
    assert "<information>" in ignored and "what is the capital of zorland?" in ignored
    assert "<search> capital of zorland </search>" in learned and "<answer> karova </answer>" in learned
    assert ex.ids[-1] == tok.eos_token_id and ex.mask[-1] == 1


def test_pretraining_text_can_leave_the_documents_out_of_the_loss(tiny_assets):
    """The prior's copy drills: the documents are context (their values are random), the turns are learned."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    drill = ("Question: what is the capital of zorland?\n<think> need it </think> <search> zorland capital </search>"
             "\n\n<information>Doc 1: zorland capital is karova .</information>\n\n<think> zorland capital is karova ."
             " </think> <answer> karova </answer>")
    full, masked = encode_text_example(tok, drill), encode_text_example(tok, drill, mask_information=True)
    assert all(full.mask) and len(masked.ids) == len(masked.mask)
    learned = tok.decode([i for i, m in zip(masked.ids, masked.mask) if m])
    ignored = tok.decode([i for i, m in zip(masked.ids, masked.mask) if not m])
    assert ignored.strip() == "<information>Doc 1: zorland capital is karova .</information>"
    assert learned.startswith("Question: what is the capital") and learned.endswith("<answer> karova </answer>")


def test_sft_lowers_the_loss(tiny_assets, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_assets["model"])
    exs = [encode_text_example(tok, "the capital of zorland is karova . the founder of karova is milo tesh .")] * 32
    r = sft_train(tiny_assets["model"], exs, tokenizer=tok, steps=40, lr=3e-3, batch_size=8, warmup=1,
                  log_every=0, out_dir=str(tmp_path / "out"))
    assert r["losses"][-1] < 0.5 * r["losses"][0]
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_weighted_loss_is_the_usual_mean_with_unit_weights_and_counts_heavier_tokens_more():
    import torch
    import torch.nn.functional as F

    from zs_ray.sft.sft import weighted_lm_loss

    torch.manual_seed(0)
    logits, ids = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    labels = ids.clone()
    labels[:, :2] = -100  # the prompt
    unit = (labels != -100).float()
    usual = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(weighted_lm_loss(logits, labels, unit), usual)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100,
                         reduction="none").view(2, 4)
    heavy = unit.clone()
    heavy[0, 3] = 4.0  # token 3 of row 0 counts four times
    want = (ce.sum() + 3 * ce[0, 2]) / (unit.sum() + 3)
    assert torch.allclose(weighted_lm_loss(logits, labels, heavy), want)


def test_lm_loss_runs_the_head_only_where_it_learns_and_gives_the_same_loss_and_gradients(tiny_assets):
    import torch
    from transformers import AutoModelForCausalLM

    from zs_ray.sft.sft import lm_loss, weighted_lm_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_assets["model"], dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (3, 12), generator=g)
    attn = torch.ones_like(ids)
    attn[2, 9:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :5] = -100  # prompt
    labels[2, 9:] = -100
    weights = (labels != -100).float()
    weights[0, 7] = 3.0
    fast = lm_loss(model, ids, attn, labels, weights)
    fast.backward()
    g_fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    full = weighted_lm_loss(model(input_ids=ids, attention_mask=attn).logits, labels, weights)
    full.backward()
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(g_fast[n], p.grad, atol=1e-5, rtol=1e-4)
