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

With post.tools (e.g. "calculator") the prompts are rendered with those tools' specs in the
system turn and each completion is a rollout of adamba/tools/loop.py, sampled one at a time: a
call the model writes is run (at most post.max_calls) and its result forced in, and the model
continues. The loss and completion_len then cover only the tokens the model generated (the
rollout's mask; forced tool results and assistant headers get none); exact scores the last
assistant message's text, and post.reward may add the "tool" term (rewards.tool_success: the
fraction of the rollout's calls that succeeded, 0 with no call). Extra metrics: calls (per
completion) and tool_success (successful calls / calls this step, 0 when none were made).

`dpo` (preference pairs, a frozen phase-start reference) and `distill` (a teacher checkpoint
scores the student's own samples, per-token reverse KL; or the teacher's samples, forward KL)
are at the end of this file, each documented on its class.
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
from adamba.post.distill import kl
from adamba.post.dpo import dpo_loss, sequence_logp
from adamba.post.grpo import advantages, policy_loss
from adamba.post.rewards import REWARDS, TOOL, Reward, combined, exact_answer, tool_success
from adamba.tools import ToolRegistry, default_registry
from adamba.tools.loop import generate_with_tools
from adamba.train.objectives import Objective, register


def parse_reward(spec: str, tools: bool = False) -> tuple[Reward, list[tuple[str, float]]]:
    """post.reward, "exact+0.1*format" -> (the weighted sum of its text rewards, [(name, weight),
    ...]). `tools`: the "tool" term is allowed (it scores calls, not text: the caller adds it)."""
    terms: list[tuple[str, float]] = []
    for part in spec.split("+"):
        w, star, name = part.strip().rpartition("*")
        try:
            weight = float(w) if star else 1.0
        except ValueError:
            weight = math.nan
        terms.append((name.strip(), weight))
    names = [*REWARDS, TOOL] if tools else list(REWARDS)
    if not spec.strip() or any(n not in names or not math.isfinite(w) for n, w in terms):
        hint = "" if tools or all(n != TOOL for n, _ in terms) else " ('tool' needs post.tools set)"
        raise AdambaError(
            f"post.reward={spec!r}: write a sum of [weight*]name over {', '.join(names)}, e.g. 'exact+0.1*format'{hint}"
        )
    return combined({REWARDS[n]: w for n, w in terms if n != TOOL}), terms


def parse_tools(spec: str) -> ToolRegistry | None:
    """post.tools, "calculator,python" -> a registry of those built-in tools (None for "")."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        return None
    known = default_registry()
    bad = [n for n in names if n not in known]
    if bad or len(set(names)) < len(names):
        why = f"unknown tool {bad[0]!r}" if bad else "a tool named twice"
        raise AdambaError(
            f"post.tools={spec!r}: {why}; write comma-separated names of {', '.join(known.names())}"
        )
    return ToolRegistry(known.get(n) for n in names)


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


def load_prompts(path: str, tok: Tokenizer, tools: list[dict] | None = None) -> list[tuple[list[int], str]]:
    """post.prompts -> [(prompt ids ending in <|assistant|>, reference answer)]; `tools`: specs for
    the system turn."""
    out = []
    for i, rec in enumerate(read_records(path)):
        got = _prompt(rec)
        if isinstance(got, str):
            raise AdambaError(f"post.prompts={path}: record {i + 1}: {got}")
        msgs, answer = got
        out.append((render(tok, msgs, tools, prompt=True).ids, answer))
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
    model,
    seqs: list[list[int]],
    starts: list[int],
    pad: int,
    temperature: float = 1.0,
    keep: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log probabilities [N, T-1] of every token after position starts[i] of seqs[i]
    under the logits / temperature the tokens were sampled from (as TRL scores them), right-padded
    (position j scores token j + 1), and the mask [N, T-1] of those tokens. The head runs on the
    masked positions only, so no [N, T, vocab] logits are kept for backward. `keep[i]` (one 0/1
    per token after starts[i], a tool rollout's mask) leaves the 0 tokens out of the mask."""
    x, mask = _pack(model, seqs, starts, pad, keep)
    h = model.hidden(x[:, :-1])[mask]
    lp = F.log_softmax(model.head(h).float() / temperature, -1)
    lp = lp.gather(-1, x[:, 1:][mask][:, None]).squeeze(-1)
    logp = torch.zeros(mask.shape, dtype=lp.dtype, device=x.device)
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
        self.tools = parse_tools(pc.tools)
        self.reward, terms = parse_reward(pc.reward, self.tools is not None)
        self.tool_weight = sum(w for n, w in terms if n == TOOL)
        self.tok = _chat_tokenizer(cfg, "grpo")
        self.prompts = load_prompts(pc.prompts, self.tok, self.tools and self.tools.specs())
        self.stops = stop_ids(self.tok)
        self.rank, self.world = _rank_world(model, phase)
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

    def _tool_rollouts(self, ids: list[int], answer: str, seed: int, out: dict) -> None:
        """post.group_size rollouts of one prompt with the tools, one at a time in eval mode, added
        to `out` (seqs, starts, keep, rewards, exact, calls, calls_ok)."""
        pc, model = self.post, self.model
        was = model.training
        model.eval()
        try:
            for c in range(pc.group_size):
                r = generate_with_tools(
                    model,
                    self.tok,
                    ids,
                    self.tools,
                    pc.max_new_tokens,
                    pc.temperature,
                    pc.top_k or None,
                    (seed + c * 1_000_033) % 2**63,
                    pc.max_calls,
                )
                text = next((m.content for m in reversed(r.messages) if m.role == "assistant"), "")
                out["seqs"].append(ids + r.ids)
                out["starts"].append(len(ids))
                out["keep"].append(r.mask)
                out["rewards"].append(self.reward(text, answer) + self.tool_weight * tool_success(r.calls))
                out["exact"].append(exact_answer(text, answer))
                out["calls"] += len(r.calls)
                out["calls_ok"] += sum(res.error is None for _, res in r.calls)
        finally:
            model.train(was)

    def loss(self, step, next_batch):
        pc, model, B, G = self.post, self.model, self.phase.batch_size, self.post.group_size
        device = next(model.parameters()).device
        seqs, starts, rewards, exact = [], [], [], []
        roll = {"seqs": seqs, "starts": starts, "keep": [], "rewards": rewards, "exact": exact}
        roll.update(calls=0, calls_ok=0)
        for j in range(B):
            k = self.position + self.rank * B + j
            ids, answer = self._prompt_at(k)
            seed = (self.cfg.train.seed * 1_000_003 + self.phase.index * 7_919 + k) % 2**63
            if self.tools is not None:
                self._tool_rollouts(ids, answer, seed, roll)
                continue
            gen = torch.Generator(device=device).manual_seed(seed)
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
        keep = roll["keep"] if self.tools is not None else None
        logp, mask = completion_logp(model, seqs, starts, self.tok.pad_id, pc.temperature, keep)
        ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref = completion_logp(self.reference, seqs, starts, self.tok.pad_id, pc.temperature, keep)[0]
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
        if self.tools is not None:
            stats.update(calls=roll["calls"], calls_ok=roll["calls_ok"])
        for key, v in stats.items():
            self._sums[key] = self._sums.get(key, 0.0) + v
        n = tokens if pc.loss_type == "dapo" else torch.tensor(len(seqs), device=device)
        return loss, loss.detach(), n

    def metrics(self) -> dict:
        """This step's means over its completions (this process's), then reset; with tools,
        tool_success is over the step's calls (0 when none were made)."""
        s, self._sums = self._sums, {}
        n = s.pop("n", 0) or 1
        ok = s.pop("calls_ok", None)
        out = {key: v / n for key, v in s.items()}
        if ok is not None:
            out["tool_success"] = ok / s["calls"] if s["calls"] else 0.0
        return out

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


# --- dpo and distill -------------------------------------------------------------------------


def _chat_tokenizer(cfg, name: str) -> Tokenizer:
    tok = Tokenizer.load(cfg.data.tokenizer)
    if not tok.has_chat:
        raise AdambaError(
            f"the {name} objective renders prompts with adamba's chat tokens (<|user|>, <|end|> ...), "
            f"which the imported tokenizer {cfg.data.tokenizer} lacks (add them: adamba surgery chat-tokens)"
        )
    return tok


def _seeded_at(obj, k: int, n: int) -> int:
    """Index into a file of n records of the k-th item of a phase's stream: a seeded order, a new
    one each pass (GRPO's order, kept in obj._order)."""
    epoch, i = divmod(k, n)
    if obj._order is None or obj._order[0] != epoch:
        g = torch.Generator().manual_seed(obj.phase.seed * 1_000_003 + epoch)
        obj._order = (epoch, torch.randperm(n, generator=g).tolist())
    return obj._order[1][i]


def _rank_world(model, phase) -> tuple[int, int]:
    """(rank, world) of this process; refused in one line under FSDP2, whose sharded weights the
    objectives' sampling and scoring (plain calls on the unwrapped model) cannot use. Under DDP
    every rank holds the whole model and takes its own prompts of the shared stream."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch 2.5 keeps it under _composable
        from torch.distributed._composable.fsdp import FSDPModule
    if any(isinstance(m, FSDPModule) for m in model.modules()):
        raise AdambaError(
            f"phase {phase.name!r}: the {phase.objective!r} objective samples and scores with the whole "
            "model on every rank, which FSDP2 shards: run it with train.parallel=ddp"
        )
    dist = torch.distributed
    on = dist.is_available() and dist.is_initialized()
    return (dist.get_rank(), dist.get_world_size()) if on else (0, 1)


def load_pairs(path: str, tok: Tokenizer) -> list[tuple[list[int], list[int], list[int]]]:
    """post.pairs -> [(prompt ids ending in <|assistant|>, chosen ids, rejected ids)], each reply
    the assistant's text and its <|end|>."""
    end, out = tok.special_id("<|end|>"), []
    for i, rec in enumerate(read_records(path)):
        if not isinstance(rec, dict) or not all(
            isinstance(rec.get(k), str) and rec[k].strip() for k in ("prompt", "chosen", "rejected")
        ):
            raise AdambaError(
                f"post.pairs={path}: record {i + 1}: write {{prompt, chosen, rejected}} with non-empty text"
            )
        ids = render(tok, [Message("user", rec["prompt"])], prompt=True).ids
        out.append((ids, tok.encode(rec["chosen"]) + [end], tok.encode(rec["rejected"]) + [end]))
    if not out:
        raise AdambaError(
            f"post.pairs={path} holds no records: write one {{prompt, chosen, rejected}} object a line"
        )
    return out


class DPOObjective(Objective):
    """`dpo` (a phase with `objective = "dpo"`): per micro-step the phase's batch_size pairs of
    post.pairs (a seeded order, cycling, position checkpointed); the sigmoid DPO loss of
    adamba/post/dpo.py (post.dpo_beta, post.label_smoothing) on the summed log probabilities of
    the chosen and rejected replies (their <|end|> included) under the model and under the model
    as the phase began (frozen, checkpointed like GRPO's reference). Metrics: accuracy (the
    implicit reward ranks chosen first) and margin (the mean implicit reward margin,
    dpo_beta x the log-ratio difference)."""

    def __init__(self, model, cfg, phase, forward):
        super().__init__(model, cfg, phase, forward)
        self.post = cfg.post
        if not self.post.pairs:
            raise AdambaError(
                f"phase {phase.name!r} uses the 'dpo' objective: set post.pairs to a JSONL file of "
                "{prompt, chosen, rejected} records"
            )
        self.tok = _chat_tokenizer(cfg, "dpo")
        self.pairs = load_pairs(self.post.pairs, self.tok)
        self.rank, self.world = _rank_world(model, phase)
        self.position = 0
        self._order: tuple[int, list[int]] | None = None
        self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self._sums: dict[str, float] = {}

    def logps(self, model, batch) -> torch.Tensor:
        """[2B] summed reply log probabilities: the chosen replies, then the rejected ones."""
        seqs = [p + c for p, c, _ in batch] + [p + r for p, _, r in batch]
        starts = [len(p) for p, _, _ in batch] * 2
        return sequence_logp(*completion_logp(model, seqs, starts, self.tok.pad_id))

    def loss(self, step, next_batch):
        pc, B = self.post, self.phase.batch_size
        batch = [
            self.pairs[_seeded_at(self, self.position + self.rank * B + j, len(self.pairs))] for j in range(B)
        ]
        self.position += B * self.world
        lp = self.logps(self.model, batch)
        with torch.no_grad():
            ref = self.logps(self.reference, batch)
        loss, acc = dpo_loss(lp[:B], lp[B:], ref[:B], ref[B:], pc.dpo_beta, pc.label_smoothing)
        d = lp.detach() - ref
        margin = pc.dpo_beta * (d[:B] - d[B:])
        for key, v in (("accuracy", float(acc.sum())), ("margin", float(margin.sum())), ("n", B)):
            self._sums[key] = self._sums.get(key, 0.0) + v
        return loss, loss.detach(), torch.tensor(B, device=lp.device)

    metrics = GRPOObjective.metrics
    state_dict = GRPOObjective.state_dict
    load_state_dict = GRPOObjective.load_state_dict


def load_teacher(path: str, tok: Tokenizer, vocab_size: int, device):
    """The teacher checkpoint as a frozen eval-mode model on `device`; refused in one line unless
    its tokenizer is the student's (same fingerprint and vocabulary size)."""
    from adamba.checkpoint import WEIGHTS, load_model

    teacher, ttok, ckpt = load_model(path)
    if ttok.fingerprint() != tok.fingerprint() or ckpt.cfg.model.vocab_size != vocab_size:
        raise AdambaError(
            f"post.teacher={path}: its tokenizer ({ttok.fingerprint()[:12]}, model vocab "
            f"{ckpt.cfg.model.vocab_size}) is not the student's ({tok.fingerprint()[:12]}, vocab {vocab_size}): "
            "distillation compares the two distributions token by token, so both need one tokenizer"
        )
    teacher.weights_sha256 = ckpt.state.get("files", {}).get(WEIGHTS, {}).get("sha256")  # checked on resume
    return teacher.to(device).eval().requires_grad_(False)


def completion_logits(model, seqs: list[list[int]], starts: list[int], pad: int) -> torch.Tensor:
    """[1, N, vocab] logits at the N positions that predict the completion tokens of seqs (those
    after starts[i]), in the order completion_logp's mask takes them."""
    x, mask = _pack(model, seqs, starts, pad)
    return model.head(model.hidden(x[:, :-1])[mask])[None]


def _pack(model, seqs, starts, pad, keep=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [N, T] and the mask [N, T-1] of the positions that predict a token after
    starts[i] (those `keep[i]` marks 1, when given)."""
    device = next(model.parameters()).device
    T = max(len(s) for s in seqs)
    x = torch.full((len(seqs), T), pad, dtype=torch.long, device=device)
    mask = torch.zeros(len(seqs), T - 1, dtype=torch.bool, device=device)
    for i, (s, a) in enumerate(zip(seqs, starts)):
        x[i, : len(s)] = torch.tensor(s, device=device)
        mask[i, a - 1 : len(s) - 1] = True if keep is None else torch.tensor(keep[i], dtype=torch.bool)
    return x, mask


class DistillObjective(Objective):
    """`distill` (a phase with `objective = "distill"`): per micro-step the phase's batch_size
    prompts of post.prompts (GRPO's stream: seeded, cycling, checkpointed), post.group_size
    completions each sampled with GRPO's sampler (post.max_new_tokens, temperature, top_k);
    the teacher (post.teacher, any adamba checkpoint with the student's tokenizer; frozen, no
    gradient) scores every completion token, and the loss is the per-token KL of
    adamba/post/distill.py over the completion tokens at temperature 1, averaged over the step's
    tokens. post.distill_mode: "on-policy" samples from the student and takes reverse
    KL(student || teacher) (GKD / on-policy distillation); "off-policy" samples from the teacher
    and takes forward KL(teacher || student), i.e. distillation on the teacher's own text with
    its full distribution as the target (SFT on teacher samples with soft labels). Metric: kl,
    the mean per-token KL of the loss."""

    def __init__(self, model, cfg, phase, forward):
        super().__init__(model, cfg, phase, forward)
        pc = self.post = cfg.post
        for key, what in (
            ("prompts", "a JSONL file of {question, answer} records"),
            ("teacher", "a run or checkpoint"),
        ):
            if not getattr(pc, key):
                raise AdambaError(
                    f"phase {phase.name!r} uses the 'distill' objective: set post.{key} to {what}"
                )
        self.tok = _chat_tokenizer(cfg, "distill")
        self.prompts = load_prompts(pc.prompts, self.tok)
        self.stops = stop_ids(self.tok)
        device = next(model.parameters()).device
        self.rank, self.world = _rank_world(model, phase)  # refuses FSDP2 before loading a teacher
        self.teacher = load_teacher(pc.teacher, self.tok, cfg.model.vocab_size, device)
        self.teacher_sha = self.teacher.weights_sha256
        self.position = 0
        self._order: tuple[int, list[int]] | None = None
        self._sums: dict[str, float] = {}

    def loss(self, step, next_batch):
        pc, B = self.post, self.phase.batch_size
        device = next(self.model.parameters()).device
        on = pc.distill_mode == "on-policy"
        seqs, starts = [], []
        for j in range(B):
            k = self.position + self.rank * B + j
            ids = self.prompts[_seeded_at(self, k, len(self.prompts))][0]
            gen = torch.Generator(device=device).manual_seed(
                (self.cfg.train.seed * 1_000_003 + self.phase.index * 7_919 + k) % 2**63
            )
            sampler = self.model if on else self.teacher
            for c in sample_group(
                sampler,
                ids,
                pc.group_size,
                pc.max_new_tokens,
                pc.temperature,
                pc.top_k or None,
                self.stops,
                gen,
            ):
                seqs.append(ids + c)
                starts.append(len(ids))
        self.position += B * self.world
        student = completion_logits(self.model, seqs, starts, self.tok.pad_id)
        with torch.no_grad():
            teacher = completion_logits(self.teacher, seqs, starts, self.tok.pad_id)
        loss = kl(student, teacher, direction="reverse" if on else "forward")
        n = student.shape[1]
        self._sums["kl"] = self._sums.get("kl", 0.0) + float(loss.detach()) * n
        self._sums["completion_len"] = self._sums.get("completion_len", 0.0) + n
        self._sums["n"] = self._sums.get("n", 0.0) + len(seqs)
        return loss, loss.detach(), torch.tensor(n, device=device)

    def metrics(self) -> dict:
        """This step's mean per-token KL and mean completion length (this process's), then reset."""
        s, self._sums = self._sums, {}
        tokens = s.get("completion_len", 0.0) or 1.0
        return {"kl": s.get("kl", 0.0) / tokens, "completion_len": tokens / (s.get("n", 0.0) or 1.0)}

    def state_dict(self) -> dict:
        return {"position": self.position, "teacher_sha256": self.teacher_sha}

    def load_state_dict(self, state: dict) -> None:
        """A resume must distil from the teacher the run began with: a teacher run that trained on
        (its LATEST moved) or another checkpoint at that path would silently change the target."""
        was = state.get("teacher_sha256")
        if was is not None and was != self.teacher_sha:
            raise AdambaError(
                f"post.teacher={self.post.teacher} is not the teacher this run began with (its weights "
                f"changed: sha256 {was[:12]} then, {str(self.teacher_sha)[:12]} now): resume with that "
                "checkpoint (a checkpoints/step_N folder), or start a new run"
            )
        self.position = int(state.get("position", 0))


register("dpo", DPOObjective)
register("distill", DistillObjective)
