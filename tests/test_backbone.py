import torch
import torch.nn.functional as F

from harness.model.backbone import BackboneConfig, CLModel, SplitQKV


def _model(**kw) -> CLModel:
    return CLModel(BackboneConfig(preset="vit-micro-test", **kw))


def _with_adapter(heads: int = 0) -> CLModel:
    """A model with adapter 't0' whose B is random (a fresh LoRA has B = 0, i.e. ΔW = 0) and `heads` outputs."""
    m = _model()
    if heads:
        m.heads.add(heads, seed=0)
    m.add_adapter("t0", seed=1)
    with torch.no_grad():
        for layer in m.lora_layers().values():
            layer.lora_B["t0"].weight.normal_()
    return m


def test_split_qkv_equals_fused():
    fused = torch.nn.Linear(8, 24)
    split = SplitQKV(fused)
    x = torch.randn(3, 5, 8)
    assert torch.allclose(split(x), fused(x), atol=1e-6)


def test_lora_targets_k_and_v_only():
    m = _model()
    names = sorted(m.lora_layers())
    assert names == sorted(f"blocks.{b}.attn.qkv.{p}" for b in range(2) for p in "kv")


def test_training_changes_k_v_and_leaves_q_bit_identical():
    m = _model()
    q_before = [b.attn.qkv.q.weight.clone() for b in m.vit.base_model.model.blocks]
    kv_before = {n: w.clone() for n, w in m.merged_weights().items()}
    m.heads.add(3, seed=0)
    params = m.add_adapter("t0", seed=1)
    opt = torch.optim.SGD(params + list(m.heads.parameters()), lr=0.5)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 3, (8,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    m.fold_adapter("t0", 1.0)
    for b, q in zip(m.vit.base_model.model.blocks, q_before):
        assert torch.equal(b.attn.qkv.q.weight, q)
    changed = [not torch.equal(w, kv_before[n]) for n, w in m.merged_weights().items()]
    assert all(changed)
    assert m.adapters() == []


def test_fold_equals_unmerged_forward_and_delta_is_dense_product():
    m = _with_adapter(heads=4)
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        before = m(x)
    layer = next(iter(m.lora_layers().values()))
    expected = layer.lora_B["t0"].weight @ layer.lora_A["t0"].weight * layer.scaling["t0"]
    d = m.delta("t0")
    assert torch.allclose(next(iter(d.values())), expected)
    m.fold_adapter("t0", 1.0)
    with torch.no_grad():
        after = m(x)
    assert torch.allclose(before, after, atol=1e-5)


def test_adapter_output_scale_scales_the_product_not_the_factors():
    m = _with_adapter()
    layer = next(iter(m.lora_layers().values()))
    x = torch.randn(2, 5, layer.in_features)
    base = layer.get_base_layer()(x)
    with torch.no_grad():
        lora_out = layer(x) - base
        with m.adapter_output_scale("t0", 1.5):
            scaled = layer(x) - base
    assert torch.allclose(scaled, 1.5 * lora_out, atol=1e-6)
    assert torch.allclose(layer(x) - base, lora_out, atol=1e-6)  # restored


def test_trainable_state_round_trip():
    m = _with_adapter(heads=2)
    state = m.trainable_state()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        ref = m(x)
    other = _model()
    other.load_trainable_state(state)
    with torch.no_grad():
        assert torch.equal(other(x), ref)


def test_same_preset_same_weights_and_seeded_adapters():
    a, b = _model(), _model()
    for (na, wa), (nb, wb) in zip(a.merged_weights().items(), b.merged_weights().items()):
        assert na == nb and torch.equal(wa, wb)
    pa, pb = a.add_adapter("t", seed=7), b.add_adapter("t", seed=7)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    rng_before = torch.random.get_rng_state()
    _model().add_adapter("t", seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # no global RNG mutation


def test_rank_alpha_and_targets_configurable():
    m = _model(lora_rank=3, lora_alpha=6.0, lora_targets=["q", "v"])
    assert sorted({n.rsplit(".", 1)[1] for n in m.lora_layers()}) == ["q", "v"]
    m.add_adapter("t", seed=0)
    layer = next(iter(m.lora_layers().values()))
    assert layer.lora_A["t"].weight.shape[0] == 3 and layer.scaling["t"] == 2.0


def _fused_vs_plain(model: CLModel, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Features and LoRA gradients of a loss, with the plain and the fused q|k|v path."""
    out = []
    for fused in (False, True):
        model.set_fused_qkv(fused)
        params = model.adapter_parameters(model.adapters()[-1])
        with model.adapter_output_scale(model.adapters()[-1], 1.5):
            feats = model.features(x)
        grads = torch.autograd.grad(feats.square().sum(), params)
        out.append([feats.detach(), *grads])
    model.set_fused_qkv(False)
    return out[0], out[1]


def test_fused_qkv_path_is_the_plain_function_to_float_rounding():
    """SplitQKV's fused path (one q|k|v GEMM, one stacked LoRA-down GEMM) gives the plain path's features and LoRA
    gradients to float rounding — k/v targets and q/k/v targets, a scaled adapter, a retired slot and a live one;
    with forward hooks on its LoRA layers a block takes the plain path (bit-identical)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 16, 16, generator=g)
    for targets in (None, ["q", "k", "v"]):
        m = CLModel(BackboneConfig(preset="vit-micro-test", lora_targets=targets))
        m.add_adapter("old", seed=1)
        m.fold_adapter("old", 1.0)  # a retired slot: inactive, its B not zero
        m.add_adapter("t", seed=2)
        with torch.no_grad():
            for p in m.adapter_parameters("t"):
                p.normal_(generator=g)
        plain, fused = _fused_vs_plain(m, x)
        assert not torch.equal(plain[0], m.features(x).detach())  # the scale was applied (1.5, not 1)
        for a, b in zip(plain, fused, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        handles = [layer.register_forward_hook(lambda mod, args, out: out + 1.0) for layer in m.lora_layers().values()]
        plain, fused = _fused_vs_plain(m, x)  # every block has a hooked layer (as pm-gauss hooks them all)
        for h in handles:
            h.remove()
        assert all(torch.equal(a, b) for a, b in zip(plain, fused))
