"""Post-training objectives for the phase engine, registered on import (`adamba train` imports
this module; a script that builds a Trainer itself imports it first).

`grpo` (a phase with `objective = "grpo"`, settings in [post]): each micro-step takes the phase's
batch_size prompts from post.prompts (a seeded order, cycling through the file, resumable),
renders each as a user turn with the chat template, samples post.group_size completions of it
with the current model (no gradient, eval mode, the decoding state; a completion ends at <|end|>
/ <|eos|> or after post.max_new_tokens), scores them with post.reward, and takes the GRPO loss of
adamba/post/grpo.py over the completions' tokens (their <|end|> included), with gradient through
one forward over prompt + completion (log probabilities of logits / temperature, the
distribution sampled from, as TRL scores them). One update per sample (TRL's num_iterations = 1): logp_old
is the detached logp, so the ratio is 1 and the clip never binds; beta > 0 adds the k3 KL to the
model as it was when the phase began (kept frozen, and checkpointed with the run so a resumed
phase keeps the same reference).

Token weighting: the trainer averages micro-steps and ranks weighted by the count `loss` returns,
so that count is the loss type's normaliser: completion tokens for `dapo` (the mean over every
token of the step, DAPO's global normalisation), completions for grpo / bnpo / dr_grpo (their
per-micro-batch losses averaged over the step, as TRL does under gradient accumulation).
Metrics (metrics.jsonl, every step): reward, accuracy (mean exact answer), completion_len
(tokens), and kl when beta > 0.

Completions are plain replies: tool calls are not executed here yet (adamba/tools/loop.py runs
them for one sequence; rollouts with tools and a tool-success reward are the next step).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from adamba.data.chat import Message
from adamba.data.sft import QA_KEYS, read_records
from adamba.data.template import parse_reply, render, stop_ids
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.model.decode import sample_next
from adamba.post.grpo import advantages, policy_loss
from adamba.post.rewards import REWARDS, Reward, combined, exact_answer
from adamba.train.objectives import Objective, register


def parse_reward(spec: str) -> tuple[Reward, list[tuple[str, float]]]:
    """post.reward, "exact+0.1*format" -> (the weighted sum, [(name, weight), ...])."""
    terms: list[tuple[str, float]] = []
    for part in spec.split("+"):
        w, star, name = part.strip().rpartition("*")
        try:
            weight = float(w) if star else 1.0
        except ValueError:
            weight = math.nan
        terms.append((name.strip(), weight))
    if not spec.strip() or any(n not in REWARDS or not math.isfinite(w) for n, w in terms):
        raise AdambaError(
            f"post.reward={spec!r}: write a sum of [weight*]name over {', '.join(REWARDS)}, e.g. 'exact+0.1*format'"
        )
    return combined({REWARDS[n]: w for n, w in terms}), terms


def _prompt(rec: object) -> tuple[list[Message], str] | str:
    """(the prompt's messages, the reference answer) of one record, or what is wrong with it."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not all(
            isinstance(m, dict)
            and isinstance(m.get("content"), str)
            and m.get("role") in ("system", "user", "assistant")
            for m in msgs
        ):
            return "messages must be a list of {role: system/user/assistant, content: text}"
        users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
        if not users:
            return "no user message"
        answer = rec.get("answer")
        if answer is None:
            answer = next((m["content"] for m in msgs[users[-1] :] if m["role"] == "assistant"), None)
        if not isinstance(answer, str) or not answer.strip():
            return "no answer (an 'answer' field, or an assistant reply after the last user message)"
        return [Message(m["role"], m["content"]) for m in msgs[: users[-1] + 1]], answer
    for q, a in QA_KEYS:
        if q in rec and a in rec:
            if not isinstance(rec[q], str) or not isinstance(rec[a], str) or not rec[q] or not rec[a]:
                return f"empty or non-text {q}/{a}"
            return [Message("user", rec[q])], rec[a]
    return f"no question/answer fields ({', '.join(f'{q}+{a}' for q, a in QA_KEYS)}) and no messages"


def load_prompts(path: str, tok: Tokenizer) -> list[tuple[list[int], str]]:
    """post.prompts -> [(prompt ids ending in <|assistant|>, reference answer)]."""
    out = []
    for i, rec in enumerate(read_records(path)):
        got = _prompt(rec)
        if isinstance(got, str):
            raise AdambaError(f"post.prompts={path}: record {i + 1}: {got}")
        msgs, answer = got
        out.append((render(tok, msgs, prompt=True).ids, answer))
    if not out:
        raise AdambaError(
            f"post.prompts={path} holds no records: write one {{question, answer}} object a line"
        )
    return out


@torch.no_grad()
def sample_group(
    model,
    prompt_ids: list[int],
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    stops: set[int],
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """n completions of one prompt, decoded together with the per-layer state; each ends with its
    first stop token (kept) or at max_new_tokens. Eval mode while sampling."""
    was = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        state = model.init_state(n)
        logits = model(torch.tensor([prompt_ids] * n, device=device), state=state)[0][:, -1]
        out: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        for _ in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, generator).tolist()
            for r, t in enumerate(nxt):
                if not done[r]:
                    out[r].append(t)
                    done[r] = t in stops
            if all(done):
                break
            logits = model(torch.tensor(nxt, device=device)[:, None], state=state)[0][:, -1]
        return out
    finally:
        model.train(was)


def completion_logp(
    model, seqs: list[list[int]], starts: list[int], pad: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log probabilities [N, T-1] of every token after position starts[i] of seqs[i]
    under the logits / temperature the tokens were sampled from (as TRL scores them), right-padded
    (position j scores token j + 1), and the mask [N, T-1] of those tokens. The head runs on the
    masked positions only, so no [N, T, vocab] logits are kept for backward."""
    device = next(model.parameters()).device
    T = max(len(s) for s in seqs)
    x = torch.full((len(seqs), T), pad, dtype=torch.long, device=device)
    mask = torch.zeros(len(seqs), T - 1, dtype=torch.bool, device=device)
    for i, (s, a) in enumerate(zip(seqs, starts)):
        x[i, : len(s)] = torch.tensor(s, device=device)
        mask[i, a - 1 : len(s) - 1] = True
    h = model.hidden(x[:, :-1])[mask]
    lp = F.log_softmax(model.head(h).float() / temperature, -1)
    lp = lp.gather(-1, x[:, 1:][mask][:, None]).squeeze(-1)
    logp = torch.zeros(mask.shape, dtype=lp.dtype, device=device)
    logp[mask] = lp
    return logp, mask


class GRPOObjective(Objective):
    """GRPO on prompts with a verifiable answer (module docstring)."""

    def __init__(self, model, cfg, phase, forward):
        super().__init__(model, cfg, phase, forward)
        pc = self.post = cfg.post
        if not pc.prompts:
            raise AdambaError(
                f"phase {phase.name!r} uses the 'grpo' objective: set post.prompts to a JSONL file of "
                "{question, answer} records"
            )
        self.reward, _ = parse_reward(pc.reward)
        self.tok = Tokenizer.load(cfg.data.tokenizer)
        if self.tok.foreign:
            raise AdambaError(
                "the grpo objective renders prompts with adamba's chat tokens (<|user|>, <|end|> ...), "
                f"which the imported tokenizer {cfg.data.tokenizer} lacks"
            )
        self.prompts = load_prompts(pc.prompts, self.tok)
        self.stops = stop_ids(self.tok)
        dist = torch.distributed
        on = dist.is_available() and dist.is_initialized()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
        self.position = 0  # prompts taken so far, all ranks together
        self._order: tuple[int, list[int]] | None = None  # (epoch, its permutation)
        self.reference = None
        if pc.beta > 0:  # the model as the phase begins (load_state_dict replaces it on resume)
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self._sums: dict[str, float] = {}

    def _prompt_at(self, k: int) -> tuple[list[int], str]:
        """The k-th prompt of the stream: the file in a seeded order, a new order each pass."""
        epoch, i = divmod(k, len(self.prompts))
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.phase.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.prompts), generator=g).tolist())
        return self.prompts[self._order[1][i]]

    def loss(self, step, next_batch):
        pc, model, B, G = self.post, self.model, self.phase.batch_size, self.post.group_size
        device = next(model.parameters()).device
        seqs, starts, rewards, exact = [], [], [], []
        for j in range(B):
            k = self.position + self.rank * B + j
            ids, answer = self._prompt_at(k)
            gen = torch.Generator(device=device).manual_seed(
                (self.cfg.train.seed * 1_000_003 + self.phase.index * 7_919 + k) % 2**63
            )
            for c in sample_group(
                model, ids, G, pc.max_new_tokens, pc.temperature, pc.top_k or None, self.stops, gen
            ):
                text = parse_reply(self.tok, c)[0].content
                seqs.append(ids + c)
                starts.append(len(ids))
                rewards.append(self.reward(text, answer))
                exact.append(exact_answer(text, answer))
        self.position += B * self.world
        r = torch.tensor(rewards, dtype=torch.float32, device=device)
        adv = advantages(r, G, pc.scale)
        logp, mask = completion_logp(model, seqs, starts, self.tok.pad_id, pc.temperature)
        ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref = completion_logp(self.reference, seqs, starts, self.tok.pad_id, pc.temperature)[0]
        loss = policy_loss(
            logp,
            logp.detach(),
            adv,
            mask,
            pc.loss_type,
            pc.eps_low,
            pc.eps_high,
            pc.beta,
            ref,
            pc.max_new_tokens,
        )
        tokens = mask.sum()
        stats = {
            "reward": sum(rewards),
            "accuracy": sum(exact),
            "completion_len": float(tokens),
            "n": len(seqs),
        }
        if ref is not None:
            d = (ref - logp.detach())[mask]
            stats["kl"] = float((torch.exp(d) - d - 1).mean()) * len(seqs)
        for key, v in stats.items():
            self._sums[key] = self._sums.get(key, 0.0) + v
        n = tokens if pc.loss_type == "dapo" else torch.tensor(len(seqs), device=device)
        return loss, loss.detach(), n

    def metrics(self) -> dict:
        """This step's means over its completions (this process's), then reset."""
        s, self._sums = self._sums, {}
        n = s.pop("n", 0) or 1
        return {key: v / n for key, v in s.items()}

    def state_dict(self) -> dict:
        out: dict = {"position": self.position}
        if self.reference is not None:
            out["reference"] = {k: v.detach().cpu() for k, v in self.reference.state_dict().items()}
        return out

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state.get("position", 0))
        if self.reference is not None and "reference" in state:
            self.reference.load_state_dict(state["reference"])


register("grpo", GRPOObjective)
