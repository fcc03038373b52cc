import math

import torch

from adamba.eval.bpb import evaluate_bpb
from adamba.model.lm import LM
from tests.helpers import model_config


def test_bpb_leaves_the_model_in_the_mode_it_came_in():
    """An eval pass must not flip a loaded (eval-mode) model back to training mode, where a later
    pass (the efficiency task after bpb) would run with training behaviour."""
    torch.manual_seed(0)
    model = LM(model_config(vocab_size=32, d_model=32, n_layer=2, attn={"n_head": 2, "n_kv_head": 2}))
    x = torch.randint(0, 32, (2, 8))
    tb = torch.ones(32, dtype=torch.long)
    for mode in (False, True):
        model.train(mode)
        res = evaluate_bpb(model, [(x, x)], tb)
        assert model.training is mode
        # every token is one byte here: bits/byte is the mean loss in bits
        assert math.isclose(res["bpb"], res["loss"] / math.log(2), rel_tol=1e-6)
