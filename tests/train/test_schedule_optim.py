from adamba.config import TrainConfig
from adamba.model.lm import LM
from adamba.train.optim import param_groups
from adamba.train.schedule import lr_multiplier
from tests.helpers import model_config


def test_wsd_and_cosine_shapes():
    cfg = TrainConfig(schedule="wsd", warmup_frac=0.1, decay_frac=0.2, min_lr_frac=0.1)
    m = [lr_multiplier(s, 100, cfg) for s in range(100)]
    assert m[0] == 0.1 and m[9] == 1.0 and m[50] == 1.0 and m[79] == 1.0
    assert abs(m[99] - (1 - 0.9 * 19 / 20)) < 1e-9 and m[99] < m[85] < m[80]
    cfg.schedule = "cosine"
    c = [lr_multiplier(s, 100, cfg) for s in range(100)]
    assert all(a >= b for a, b in zip(c[10:], c[11:])) and abs(c[-1] - 0.1) < 0.01


def test_weight_decay_on_matrices_only():
    model = LM(model_config(vocab_size=50, d_model=32, n_layer=1, attn={"n_head": 2, "n_kv_head": 2}))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 for p in decay["params"])
    assert "embed.weight" in {names[id(p)] for p in no_decay["params"]}
    assert "head.weight" in {names[id(p)] for p in decay["params"]}
    assert all("norm" in names[id(p)] for p in no_decay["params"] if p.ndim == 1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == sum(
        p.numel() for p in model.parameters()
    )


def test_embed_lr_mult_gets_its_own_group_and_the_trainer_scales_it():
    model = LM(model_config(vocab_size=50, d_model=32, n_layer=1, attn={"n_head": 2, "n_kv_head": 2}))
    groups = param_groups(model, 0.1, embed_lr_mult=10.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(groups) == 3
    embed = groups[2]
    assert [names[id(p)] for p in embed["params"]] == ["embed.weight"]
    assert embed["lr_mult"] == 10.0 and embed["weight_decay"] == 0.0
    assert all(g["lr_mult"] == 1.0 for g in groups[:2])
    # with the default factor the embedding stays in the no-decay group (two groups only)
    assert len(param_groups(model, 0.1)) == 2
