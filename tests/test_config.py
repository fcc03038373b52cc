import pytest

from adamba.config import SECTIONS, Config, apply_overrides, load_config
from adamba.errors import AdambaError


def test_presets_load():
    from importlib.resources import files

    names = sorted(
        p.name.removesuffix(".toml") for p in files("adamba.configs").iterdir() if p.name.endswith(".toml")
    )
    assert {"tiny-cpu", "small-cpu", "plan-tiny", "curriculum-tiny"} <= set(names)
    for name in names:
        if name.startswith("trm-"):  # route B configs: their own loader (tests/trm)
            from adamba.trm.config import load_trm_config

            assert load_trm_config(name).model.n_sup >= 1
            continue
        cfg = load_config(name)
        assert cfg.model.n_layer > 0
    stages = load_config("curriculum-tiny").phase
    assert [p.name for p in stages] == ["stage1-broad", "stage2-reasoning", "stage3-special"]
    assert stages[2].lr < load_config("curriculum-tiny").train.lr  # stage 3 at a lower rate


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


# ---- ranges, strict TOML types (issue 23) -------------------------------------------------------


def _leaf_fields(obj, prefix: str):
    """(dotted key, type) of every non-table field under a config dataclass."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        sub = getattr(obj, f.name)
        if dataclasses.is_dataclass(sub):
            yield from _leaf_fields(sub, f"{prefix}.{f.name}")
        else:
            yield f"{prefix}.{f.name}", hints[f.name]


def _one_line_error(overrides: list[str], *needles: str) -> str:
    with pytest.raises(AdambaError) as e:
        load_config(None, overrides)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_every_numeric_field_has_a_range():
    """Every int field rejects -1 and every float field NaN and +-inf, naming the key: a field
    added without a range check fails here."""
    keys = [
        (k, tp) for sec in SECTIONS if sec != "phase" for k, tp in _leaf_fields(getattr(Config(), sec), sec)
    ]
    ints = [k for k, tp in keys if tp is int]
    floats = [k for k, tp in keys if tp is float]
    assert len(ints) > 30 and len(floats) > 20  # the walk found the fields
    for key in ints:
        _one_line_error([f"{key}=-1"], key)
    for key in floats:
        for bad in ("nan", "inf", "-inf"):
            _one_line_error([f"{key}={bad}"], key, "finite")
    _one_line_error(["elastic.widths=[0.5, NaN, 1.0]"], "elastic.widths")


def test_the_mistakes_users_made_get_one_line():
    _one_line_error(["model.attn.n_head=3"], "model.attn.n_head=3 must divide model.d_model=256", "head_dim")
    _one_line_error(["model.attn.n_head=6", "model.attn.n_kv_head=2"], "n_head=6 must divide model.d_model")
    _one_line_error(["model.attn.n_head=0"], "model.attn.n_head=0", ">= 1")
    _one_line_error(["model.n_layer=0"], "model.n_layer=0")
    _one_line_error(["model.d_model=0"], "model.d_model=0")
    _one_line_error(["model.vocab_size=1"], "model.vocab_size=1", ">= 2")
    for lr in ("-1e-3", "0", "nan", "inf"):
        _one_line_error([f"train.lr={lr}"], "train.lr=", "> 0")
    _one_line_error(["train.device=tpu"], "train.device='tpu'", "cuda:N")
    for dev in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert load_config(None, [f"train.device={dev}"]).train.device == dev
    for key in ("warmup_frac", "decay_frac", "min_lr_frac"):
        _one_line_error([f"train.{key}=1.5"], f"train.{key}=1.5", "[0, 1]")
        _one_line_error([f"train.{key}=-0.1"], f"train.{key}=-0.1", "[0, 1]")
    for key in ("batch_size", "grad_accum", "max_steps", "eval_batches"):
        _one_line_error([f"train.{key}=0"], f"train.{key}=0", ">= 1")
    _one_line_error(["data.seq_len=0"], "data.seq_len=0")
    _one_line_error(["train.beta2=1"], "train.beta2=1.0", "[0, 1)")
    _one_line_error(["train.seed=-1"], "train.seed=-1")
    _one_line_error(["run.out_dir= "], "run.out_dir is empty")
    _one_line_error(['data.val=["v.jsonl", ""]'], "data.val", "empty path")
    _one_line_error(["model.attn.window=-1"], "model.attn.window=-1")
    _one_line_error(["model.mlp.ratio=0.001"], "model.mlp.ratio=0.001", "0 units")
    for key in ("d_state", "d_conv", "expand", "head_dim", "n_groups", "chunk_size"):
        _one_line_error([f"model.mamba.{key}=0"], f"model.mamba.{key}=0")
    for key in ("conv", "chunk_size"):
        _one_line_error([f"model.kda.{key}=0"], f"model.kda.{key}=0")
    _one_line_error(["model.attn.n_kv_head=3"], "model.attn.n_head=4", "n_kv_head=3")


def test_checks_follow_what_the_pattern_uses():
    """Divisibility and RoPE parity bind only the layers that use them; max_seq_len is not a limit
    (RoPE tables grow on demand), so a shorter one than data.seq_len is accepted and works."""
    import torch

    from adamba.model.lm import LM

    # odd head_dim: an error with RoPE on an attention layer, fine without RoPE or attention
    _one_line_error(["model.attn.head_dim=15"], "model.attn.head_dim=15", "even for RoPE")
    assert (
        load_config(None, ["model.attn.head_dim=15", "model.attn.use_rope=false"]).model.attn.head_dim == 15
    )
    # n_head not dividing d_model: fine when head_dim is given, or when no layer derives it
    three = ["model.attn.n_head=3", "model.attn.n_kv_head=1"]
    assert load_config(None, [*three, "model.attn.head_dim=64"]).model.attn.head_dim == 64
    assert load_config(None, [*three, "model.pattern=M"]).model.pattern == "M"
    _one_line_error([*three, "model.pattern=K"], "model.attn.n_head=3 must divide")
    assert load_config(None, [*three, "model.pattern=K", "model.kda.head_dim=32"]).model.kda.n_head == 3
    # Mamba2 shapes are checked at load time when the pattern has M layers, not at the first step
    _one_line_error(["model.pattern=AM", "model.mamba.head_dim=48"], "model.mamba.head_dim=48 must divide")
    _one_line_error(["model.pattern=M", "model.mamba.n_groups=3"], "model.mamba.n_groups=3")
    assert load_config(None, ["model.mamba.head_dim=48"]).model.pattern == "A"
    # the predictor reads after `predictor_layer` layers: only a Matryoshka run needs it < n_layer
    over = ["model.n_layer=2", "elastic.predictor_layer=2"]
    assert load_config(None, over).elastic.predictor_layer == 2
    _one_line_error([*over, "elastic.enabled=true"], "elastic.predictor_layer=2", "0..1")
    cfg = load_config(None, ["model.max_seq_len=4", "data.seq_len=32", "model.d_model=32", "model.n_layer=1"])
    model = LM(cfg.model)
    logits, _ = model(torch.randint(0, 100, (1, 32)))
    assert logits.shape == (1, 32, cfg.model.vocab_size) and torch.isfinite(logits).all()


def test_boundaries_of_every_range_are_accepted():
    cfg = load_config(
        None,
        [
            *("train.warmup_frac=0", "train.decay_frac=1", "train.min_lr_frac=0", "train.beta1=0"),
            *("train.eval_every=0", "train.ckpt_every=0", "train.grad_clip=0", "train.threads=0"),
            *("train.max_minutes=0", "train.embed_lr_mult=0", "train.weight_decay=0", "train.seed=0"),
            *("model.attn.window=0", "model.vocab_size=2", "model.kda.n_head=0", "model.kda.head_dim=0"),
            *("elastic.gate_hidden=0", "elastic.calibrate_steps=0", "elastic.exit_threshold=1"),
            *("elastic.expand_layers=0", "elastic.predictor_layer=0", "elastic.exit_token_frac=0"),
        ],
    )
    assert cfg.train.decay_frac == 1.0 and cfg.train.seed == 0 and cfg.elastic.exit_threshold == 1.0


def test_toml_values_are_strict_and_set_strings_are_parsed(tmp_path):
    """A TOML file has real types: a quoted number or boolean is a mistake named with the file,
    not something to convert; an int where a float belongs is fine; `--set` (only strings) parses."""
    p = tmp_path / "c.toml"
    for text, needle in [
        ('[model]\nn_layer = "8"\n', "'model.n_layer' expects an integer, got '8' (a string: write"),
        ('[train]\nlr = "1e-3"\n', "'train.lr' expects a number, got '1e-3'"),
        ('[train]\ncompile = "true"\n', "'train.compile' expects true/false"),
        ("[train]\ncompile = 1\n", "'train.compile' expects true/false, got 1"),
        ('[elastic]\nwidths = "[0.5, 1.0]"\n', "'elastic.widths' expects a list"),
        ("[model.attn]\nn_head = 4.0\n", "'model.attn.n_head' expects an integer, got 4.0"),
    ]:
        p.write_text(text)
        with pytest.raises(AdambaError) as e:
            load_config(str(p))
        assert str(p) in str(e.value) and needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    p.write_text('[train]\nlr = "fast"\n')
    with pytest.raises(AdambaError, match=r"expects a number, got 'fast'$"):  # no "without quotes"
        load_config(str(p))
    p.write_text('[train]\nlr = 1\n[data]\ntrain = "a.jsonl"\n[elastic]\nwidths = [0.5, 1]\n')
    cfg = load_config(str(p))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.train == ["a.jsonl"] and cfg.elastic.widths == [0.5, 1.0]
    p.write_text("[train]\nlr = nan\n")
    with pytest.raises(AdambaError, match="train.lr=nan"):
        load_config(str(p))
    cfg = load_config(str(p), ["train.lr=2e-3", "model.n_layer=8", "train.compile=yes"])
    assert (cfg.train.lr, cfg.model.n_layer, cfg.train.compile) == (2e-3, 8, True)


def test_a_binary_config_file_is_named(tmp_path):
    p = tmp_path / "weights.toml"
    p.write_bytes(b"\x00\x89PNG\xff\xfe" * 20)
    with pytest.raises(AdambaError, match=r"weights.toml: not a TOML file \(not UTF-8"):
        load_config(str(p))


def test_every_numeric_field_of_a_phase_has_a_range(tmp_path):
    """The same for a [[phase]] table (its fields may be unset: None takes the [train] value)."""
    import typing

    from adamba.config import PhaseConfig

    p = tmp_path / "c.toml"
    p.write_text("[[phase]]\nsteps = 5\n")
    hints = typing.get_type_hints(PhaseConfig)
    numeric = {
        k: t for k, t in hints.items() if int in typing.get_args(t) or t is int or float in typing.get_args(t)
    }
    assert {"steps", "tokens", "lr", "batch_size", "warmup_frac"} <= set(numeric)
    for key, tp in numeric.items():
        bads = ["-1"] if (tp is int or int in typing.get_args(tp)) else ["nan", "inf", "-1"]
        for bad in bads:
            with pytest.raises(AdambaError, match=f"phase.0.{key}|phase.0: give its length"):
                load_config(str(p), [f"phase.0.{key}={bad}"])
