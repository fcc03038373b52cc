import pytest

from adamba.config import Config, apply_overrides, load_config
from adamba.errors import AdambaError


def test_presets_load():
    for name in ("tiny-cpu", "small-cpu"):
        cfg = load_config(name)
        assert cfg.model.n_layer > 0


def test_set_overrides_are_typed():
    cfg = load_config(
        "tiny-cpu", ["model.n_layer=3", "train.lr=1e-3", "model.qk_norm=false", "data.train=a.jsonl"]
    )
    assert cfg.model.n_layer == 3 and isinstance(cfg.model.n_layer, int)
    assert cfg.train.lr == 1e-3
    assert cfg.model.qk_norm is False
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
    assert cfg.model.head_dim == 128 // cfg.model.n_head
    cfg = load_config("tiny-cpu", ["model.d_model=128", "model.head_dim=48"])
    assert cfg.model.head_dim == 48
