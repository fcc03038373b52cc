import pytest

from adamba.config import Config, apply_overrides, load_config
from adamba.errors import AdambaError


def test_presets_load():
    for name in ("tiny-cpu", "small-cpu"):
        cfg = load_config(name)
        assert cfg.model.n_layer > 0


def test_set_overrides_are_typed():
    cfg = load_config(
        "tiny-cpu", ["model.n_layer=3", "train.lr=1e-3", "model.attn.qk_norm=false", "data.train=a.jsonl"]
    )
    assert cfg.model.n_layer == 3 and isinstance(cfg.model.n_layer, int)
    assert cfg.train.lr == 1e-3
    assert cfg.model.attn.qk_norm is False
    assert cfg.data.train == ["a.jsonl"]


def test_unknown_key_names_key_and_valid_ones():
    with pytest.raises(AdambaError) as e:
        apply_overrides(Config(), ["model.n_layr=3"])
    msg = str(e.value)
    assert "model.n_layr" in msg and "n_layer" in msg and "d_model" in msg
    assert "\n" not in msg


def test_wrong_type():
    with pytest.raises(AdambaError, match="model.n_layer.*integer"):
        apply_overrides(Config(), ["model.n_layer=eight"])
    with pytest.raises(AdambaError, match="train.lr.*number"):
        apply_overrides(Config(), ["train.lr=fast"])


def test_unknown_key_in_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[model]\nd_modle = 3\n")
    with pytest.raises(AdambaError, match="model.d_modle"):
        load_config(str(p))
    p.write_text("[modle]\nd_model = 3\n")
    with pytest.raises(AdambaError, match="unknown config section 'modle'"):
        load_config(str(p))


def test_pattern_repeats_and_validates():
    cfg = Config()
    cfg.model.pattern, cfg.model.n_layer = "AM", 5
    assert cfg.model.layer_types() == ["A", "M", "A", "M", "A"]
    cfg.model.pattern = "AX"
    with pytest.raises(AdambaError, match="pattern"):
        cfg.validate()


def test_missing_config_file():
    with pytest.raises(AdambaError, match="not found.*tiny-cpu"):
        load_config("no/such/file.toml")


def test_head_dim_follows_overrides_unless_set():
    cfg = load_config("tiny-cpu", ["model.d_model=128"])
    assert cfg.model.attn.head_dim == 128 // cfg.model.attn.n_head
    cfg = load_config("tiny-cpu", ["model.d_model=128", "model.attn.head_dim=48"])
    assert cfg.model.attn.head_dim == 48


OLD_FLAT_TOML = """
[model]
d_model = 96
n_layer = 3
n_head = 3
n_kv_head = 1
pattern = "MAK"
mlp_act = "swiglu"
mlp_ratio = 2.0
mamba_ffn = "none"
mamba_d_state = 16
mamba_headdim = 16
mamba_ngroups = 2
kda_head_dim = 24
kda_chunk_size = 32
"""


def test_tables_nest_and_set_reaches_them(tmp_path):
    cfg = load_config("adamba-hybrid-tiny", ["model.mamba.d_state=32", "model.attn.window=16"])
    assert cfg.model.mamba.d_state == 32 and cfg.model.attn.window == 16
    assert cfg.model.mamba.ffn == "none"  # from the preset's [model.mamba] table
    with pytest.raises(AdambaError, match=r"unknown config key 'model.mamba.d_stat'.*d_state"):
        load_config("tiny-cpu", ["model.mamba.d_stat=3"])
    with pytest.raises(AdambaError, match=r"unknown config table 'model.mambo'.*attn, mlp, mamba, kda"):
        load_config("tiny-cpu", ["model.mambo.d_state=3"])
    with pytest.raises(AdambaError, match=r"'model.attn' is a table.*model.attn.n_head"):
        load_config("tiny-cpu", ["model.attn=3"])
    p = tmp_path / "c.toml"
    p.write_text("[model]\nattn = 3\n")
    with pytest.raises(AdambaError, match=r"'model.attn' must be a \[model.attn\] table"):
        load_config(str(p))


def test_old_flat_names_on_the_command_line_name_the_new_key():
    with pytest.raises(AdambaError, match="'model.n_head' is now 'model.attn.n_head'"):
        load_config("tiny-cpu", ["model.n_head=8"])
    with pytest.raises(AdambaError, match="'model.mamba_headdim' is now 'model.mamba.head_dim'"):
        load_config("tiny-cpu", ["model.mamba_headdim=8"])


def test_flat_toml_of_the_old_layout_migrates(tmp_path):
    p = tmp_path / "old.toml"
    p.write_text(OLD_FLAT_TOML)
    m = load_config(str(p)).model
    assert (m.attn.n_head, m.attn.n_kv_head, m.attn.head_dim) == (3, 1, 32)
    assert (m.mlp.act, m.mlp.ratio) == ("swiglu", 2.0)
    assert (m.mamba.ffn, m.mamba.d_state, m.mamba.head_dim, m.mamba.n_groups) == ("none", 16, 16, 2)
    assert (m.kda.n_head, m.kda.head_dim, m.kda.chunk_size) == (3, 24, 32)
    p.write_text(OLD_FLAT_TOML + "\n[model.attn]\nn_head = 6\n")
    with pytest.raises(AdambaError, match="both 'model.n_head'.*'model.attn.n_head'"):
        load_config(str(p))


def test_checkpoint_config_json_of_the_old_layout_migrates(tmp_path):
    """A checkpoint's config.json written before the nested tables (flat keys, keys since removed)
    rebuilds the same model: the same parameter names and shapes."""
    from adamba.config import config_from_dict
    from adamba.model.lm import LM

    p = tmp_path / "old.toml"
    p.write_text(OLD_FLAT_TOML)
    new = load_config(str(p))
    old = {
        "model": {},
        "elastic": {"gate_full_only": False, "predictor_tol_nats": True},
        "train": {"lr": 1e-3},
    }
    for line in OLD_FLAT_TOML.strip().splitlines()[1:]:
        k, v = (t.strip() for t in line.split("="))
        old["model"][k] = v.strip('"') if v.startswith('"') else float(v) if "." in v else int(v)
    old["model"]["head_dim"] = 32  # what the flat layout saved: the derived value
    cfg = config_from_dict(old).validate()
    assert cfg.to_dict()["model"] == new.to_dict()["model"]
    assert cfg.train.lr == 1e-3
    shapes = {k: v.shape for k, v in LM(cfg.model).state_dict().items()}
    assert shapes == {k: v.shape for k, v in LM(new.model).state_dict().items()}
    assert config_from_dict(new.to_dict()).to_dict() == new.to_dict()  # today's layout round-trips


def test_removed_elastic_keys_explain_themselves(tmp_path):
    """Knobs removed because measurements showed they did not help: `--set` says why; a TOML file
    that asks for the removed behaviour fails, one that asks for today's loads; a checkpoint
    that recorded them loads."""
    from adamba.config import config_from_dict

    with pytest.raises(AdambaError, match="'elastic.gate_weight' was removed: the gate is fitted only by"):
        load_config("tiny-cpu", ["elastic.gate_weight=0.1"])
    with pytest.raises(AdambaError, match="'elastic.gate_token_frac' is now 'elastic.exit_token_frac'"):
        load_config("tiny-cpu", ["elastic.gate_token_frac=0.5"])
    p = tmp_path / "c.toml"
    p.write_text("[elastic]\npredictor_tol_nats = false\n")
    with pytest.raises(
        AdambaError, match="predictor_tol_nats' was removed: elastic.predictor_tol is in nats"
    ):
        load_config(str(p))
    p.write_text("[elastic]\npredictor_tol_nats = true\ngate_weight = 0.1\ngate_token_frac = 0.5\n")
    assert load_config(str(p)).elastic.exit_token_frac == 0.5
    old = {"elastic": {"gate_full_only": True, "predictor_tol_nats": False, "gate_token_frac": 0.25}}
    assert config_from_dict(old).elastic.exit_token_frac == 0.25
