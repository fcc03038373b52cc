"""adamba checkpoints inside EleutherAI's lm-evaluation-harness, so every task it ships can
score them the way it scores everything else.

    import adamba.eval.harness, lm_eval        # the import registers the model "adamba"
    lm_eval.simple_evaluate(model="adamba", model_args="ckpt=runs/t1", tasks=["arc_easy"])

    python -m adamba.eval.harness --model adamba --model_args ckpt=runs/t1 --tasks arc_easy \
        [--include_path my_tasks/]              # lm_eval's own command line, "adamba" registered

lm_eval 0.4.x finds models only in its own registry (no plugin entry points), so the plain
`lm_eval` command cannot see "adamba"; `python -m adamba.eval.harness` is that command with the
model registered first (every lm_eval flag works, including `--include_path` for local task
YAMLs).

Log-likelihoods come from adamba/eval/likelihood.py, the scorer `adamba eval` uses, so the two
agree to the last digit (tests/eval/test_harness.py); generation is greedy (or sampled when a
task asks) until one of the task's stop strings or the model's end-of-reply token.
"""

from __future__ import annotations

import torch

try:
    import lm_eval.models  # noqa: F401  (lm_eval's own models first: registering early would hide them)
    from lm_eval.api.model import LM as HarnessLM
    from lm_eval.api.registry import register_model
except ImportError as e:
    raise ImportError(f"adamba.eval.harness needs lm-evaluation-harness: pip install lm-eval ({e})") from None

from adamba.checkpoint import load_model
from adamba.data.template import stop_ids
from adamba.eval.likelihood import encode_pair, fit_prompt, loglikelihoods, rolling_logprob
from adamba.model import decode


@register_model("adamba")
class AdambaLM(HarnessLM):
    """model_args: ckpt (run directory or checkpoint folder), batch_size, max_gen_toks, device."""

    def __init__(
        self, ckpt: str, batch_size: int | str = 16, max_gen_toks: int = 256, device: str = "cpu", **_
    ):
        super().__init__()
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # lm_eval's command line asks for cuda by default
        self.model, self.tok, _ = load_model(ckpt, device=device)
        self.model.eval()
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16  # "auto": our default
        self.max_gen_toks = int(max_gen_toks)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tok, *r.args[:2]) for r in requests]
        return [(s.logprob, s.greedy) for s in loglikelihoods(self.model, pairs, self.batch_size)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return [
            rolling_logprob(self.model, self.tok.encode(r.args[0]), self.tok.bos_id, self.batch_size)[0]
            for r in requests
        ]

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        ends = stop_ids(self.tok)
        device = next(self.model.parameters()).device
        out = []
        for r in requests:
            context, kw = r.args
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.get("max_gen_toks", self.max_gen_toks))
            temperature = float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0
            ids, budget = fit_prompt(
                [self.tok.bos_id] + self.tok.encode(context), max_new, self.model.cfg.max_seq_len
            )
            got: list[int] = []
            text = ""
            for t in decode.generate(self.model, torch.tensor([ids], device=device), budget, temperature):
                if int(t[0]) in ends:
                    break
                got.append(int(t[0]))
                text = self.tok.decode(got)
                if any(u in text for u in until):
                    break
            for u in until:
                text = text.split(u, 1)[0]
            out.append(text)
        return out


def main() -> None:
    """lm_eval's command line with the adamba model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
