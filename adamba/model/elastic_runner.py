"""Elastic decoding: `ElasticRunner` runs a Matryoshka-trained model under a compute-mode policy,
prompt prefill then one token at a time, and counts what every token cost (adamba/model/flops.py).

auto: the predictor picks the width once from the prompt (reading it through the first
`predictor_layer` layers at full width); after each layer the gate g is read: g > exit_threshold
exits the token (final norm + head on this hidden state); g < expand_threshold at a layer inside
the last `expand_layers` switches the remaining layers to full width. Skipped layers' KV
(CALM-style): an exited token's hidden state is copied forward as the input of every skipped
layer, which computes and caches only its K/V from it (M/K layers advance their state on it), so
later tokens find an entry at every layer. Fixed modes (ghost / whisper / normal / think) run one
width in every layer and never exit. Both decode a batch of sequences together: auto runs each
layer in one pass over every row at a shared width, rows of narrower predicted widths masked down
to theirs, the few wider or expanded rows recomputed as small groups (attention-only models;
`ElasticRunner._plan_rows`; on a GPU `_step_dense` masks every row to its width in one pass
instead, with no host sync inside a step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from adamba.config import ElasticConfig, ModelConfig
from adamba.errors import AdambaError
from adamba.model import flops as cost
from adamba.model.cache import KVCache, RowView
from adamba.model.decode import sample_next
from adamba.model.elastic import Policy, check_width, mode_policy, model_ecfg


@dataclass
class TokenStats:
    """Per-token accounting collected by a runner."""

    flops: list[float] = field(default_factory=list)
    full_flops: list[float] = field(default_factory=list)
    head_flops: list[float] = field(default_factory=list)  # the LM head, paid once by every token
    exit_layer: list[int] = field(default_factory=list)
    expanded: list[bool] = field(default_factory=list)
    widths: list[list[float]] = field(default_factory=list)

    def summary(self, n_layer: int) -> dict:
        n = max(1, len(self.flops))
        hist = [0] * n_layer
        for e in self.exit_layer:
            hist[e] += 1
        return {
            "tokens": len(self.flops),
            "flops_rel": sum(self.flops) / max(1e-9, sum(self.full_flops)),
            # the same without the LM head: what the layers (incl. gates, copy-forward K/V) cost
            "layer_flops_rel": (sum(self.flops) - sum(self.head_flops))
            / max(1e-9, sum(self.full_flops) - sum(self.head_flops)),
            "exit_rate": sum(e < n_layer - 1 for e in self.exit_layer) / n,
            "expand_rate": sum(self.expanded) / n,
            "exit_hist": hist,
            "mean_width": sum(sum(w) / len(w) for w in self.widths) / n if self.widths else 1.0,
        }


class ElasticRunner:
    """Elastic decoding: `prefill(prompt)` then `step(token)`, for `batch` sequences together.
    Fixed-width policies (ghost / whisper / normal / think) run the plain batched path. Adaptive
    policies (auto: per-row predicted width, per-token exit and expansion) decode a batch by
    running each layer's attention on every row at a shared width (narrower rows masked, exited
    rows adding their copy-forward K/V) and its MLP on the live rows, the few wider or expanded
    rows as small groups; each row gets the decisions and logits batch-1 decoding gives it, up
    to float rounding (tests). Batched adaptive decoding needs an attention-only model."""

    def __init__(self, model, ecfg: ElasticConfig, policy: Policy, batch: int = 1):
        if policy.widths is not None:
            for w in policy.widths:
                check_width(w, ecfg)
        for name in ("exit_threshold", "expand_threshold"):
            v = getattr(policy, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise AdambaError(f"{name.replace('_', ' ')} {v} must lie in [0, 1]")
        if (policy.widths is None or policy.exit_threshold is not None) and not hasattr(model, "elastic"):
            raise AdambaError("the model has no gate/predictor heads (trained without elastic.enabled)")
        adaptive = (
            policy.widths is None or policy.exit_threshold is not None or policy.expand_threshold is not None
        )
        if batch != 1 and adaptive and any(b.kind != "A" for b in model.blocks):
            raise AdambaError(
                "early exit, expansion and the width predictor decode a batch only on attention-only "
                "models (Mamba2/KDA states are not split by row); decode one sequence at a time (batch 1)"
            )
        self.model, self.ecfg, self.policy, self.batch = model, ecfg, policy, batch
        self.rows_mode = batch != 1 and adaptive  # per-row widths / exits: layers run on row subsets
        self.row_widths: list[float] = [1.0] * batch
        # batched adaptive decoding (_plan_rows): shared width, wider row groups, per-row masks
        self.w_a = 1.0  # the width every row's pass runs at
        self.max_wide = max(1, batch // 16)  # at most this many rows above w_a (tests vary it)
        self.dense: bool | None = None  # _step_dense (no row subsets) or _step_rows; None: GPUs dense
        self.row_w = self.in_a = None  # [B] row widths, rows at or below w_a
        self.masks_a = None  # per-layer row masks of heads / units, when rows below w_a exist
        self.dense_plan: dict | None = None  # _step_dense's tables, built at its first step
        self.wide: list = []  # (width, rows) above w_a, run as groups of their own
        self.other_widths: list = []  # (width, rows) not at w_a: they read their width's gate
        self.L = len(model.blocks)
        self.cfg: ModelConfig = model.cfg
        self.stats = TokenStats()
        self.widths: list[float] = [1.0] * self.L
        self.state: list = []
        self.pos = 0  # tokens seen so far

    # --- FLOPs model: 2 x multiply-adds of every matmul a token runs
    def _stored_heads(self, i: int, row_width: float) -> int:
        """KV heads a batch-1 runner of this row width stores at layer i (what the FLOPs model
        charges a row; a batch of mixed widths stores its widest row's heads for every row)."""
        a = self.model.blocks[i].mixer
        if self.policy.expand_threshold is not None and i >= self.L - self.ecfg.expand_layers:
            row_width = 1.0  # expansion may widen this layer later: reserved at full width
        return a.heads_at(row_width)[1]

    def _kv_heads(self, i: int, n_store: int | None) -> int:
        """KV heads whose K/V layer i computes: given, else what its cache stores (all before a
        prefill)."""
        if n_store is not None:
            return n_store
        return self.state[i].heads if self.state else self.model.blocks[i].mixer.n_kv_head

    def _layer_flops(self, i: int, w: float, ctx: int, n_store: int | None = None) -> float:
        block = self.model.blocks[i]
        kv = self._kv_heads(i, n_store) if block.kind == "A" else None
        return cost.layer_flops(block, self.cfg.d_model, w, ctx, kv)

    def _new_state(self) -> list:
        p = next(self.model.parameters())
        out = []
        for i, block in enumerate(self.model.blocks):
            if block.kind == "A":
                a = block.mixer
                w = max(self.row_widths) if self.rows_mode else self.widths[i]
                if self.policy.expand_threshold is not None and i >= self.L - self.ecfg.expand_layers:
                    w = 1.0  # expansion may widen this layer later: reserve full width now
                heads = a.heads_at(w)[1]
                out.append(KVCache(self.batch, a.n_kv_head, a.head_dim, p.device, p.dtype, heads=heads))
            else:
                out.append(block.mixer.init_state(self.batch, p.device, p.dtype))
        return out

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Run the prompt [batch, T] (no exit); returns the last position's logits [batch, V]."""
        m = self.model
        if idx.shape[0] != self.batch:
            raise AdambaError(f"the prompt has {idx.shape[0]} rows; this runner decodes batch {self.batch}")
        pol = self.policy
        mask_h = mask_u = None
        if self.rows_mode:
            if pol.widths is not None and len(set(pol.widths)) > 1:
                raise AdambaError("batched adaptive decoding takes one width for every layer")
            self.row_widths = self.choose_width(idx) if pol.widths is None else [pol.widths[0]] * self.batch
            self._plan_rows(idx.device)
            self.dense_plan = None  # rebuilt for these rows at the first dense step
            self.widths = [max(self.row_widths)] * self.L  # the prompt: one pass at the widest row's
            if len(set(self.row_widths)) > 1:  # ... narrower rows masked down to their own width
                mask_h, mask_u = self._row_masks(self.widths[0])
        else:
            self.widths = [self.choose_width(idx)[0]] * self.L if pol.widths is None else list(pol.widths)
        self.state = self._new_state()
        x = m.embed(idx)
        for i, block in enumerate(m.blocks):
            if mask_h is None:
                x = block(x, self.state[i], self.widths[i])
            else:
                h = x + block.mixer(block.norm1(x), self.state[i], self.widths[i], mask_h[i])
                x = h + block.mlp(block.norm2(h), self.widths[i], mask_u[i])
        self.pos = idx.shape[1]
        return m.head(m.norm(x))[:, -1]  # all rows, as the plain model does (same bits)

    def _plan_rows(self, device) -> None:
        """Batched adaptive decoding's plan from the rows' widths: the shared width w_a that
        every step runs on all rows (rows of narrower widths masked down to theirs, exited rows
        computing only their copy-forward K/V), rows wider than w_a (and expanded rows) run on
        top of it as small row groups through row views of the caches. w_a is the smallest
        width with at most `max_wide` (batch/16) rows wider, so a few wide rows do not make every row pay
        their width, and a few narrow rows cost no separate pass."""
        ws = sorted(set(self.row_widths))
        self.w_a = next(w for w in ws if sum(r > w for r in self.row_widths) <= self.max_wide)
        self.row_w = torch.tensor(self.row_widths, device=device)
        self.masks_a = self._row_masks(self.w_a) if ws[0] < self.w_a else None
        self.wide = [(w, self.row_w == w) for w in ws if w > self.w_a]
        self.in_a = self.row_w <= self.w_a
        self.other_widths = [(w, self.row_w == w) for w in ws if w != self.w_a]

    def _width_masks(self, i: int, w: float, ws: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's 0/1 multipliers for a pass at width w, one per row width in ws: query heads
        [len(ws), hq, 1, 1] and MLP units [len(ws), 1, n] that keep a row of width ws[j] to its
        own (rows at or above w keep all of w's). Index them by each row's width."""
        p = next(self.model.parameters())
        a, mlp = self.model.blocks[i].mixer, self.model.blocks[i].mlp
        hq, n = a.heads_at(w)[0], mlp.units_at(w)
        kh = torch.tensor([a.heads_at(c)[0] for c in ws], device=p.device)
        ku = torch.tensor([mlp.units_at(c) for c in ws], device=p.device)
        heads = (torch.arange(hq, device=p.device) < kh[:, None]).to(p.dtype)[:, :, None, None]
        return heads, (torch.arange(n, device=p.device) < ku[:, None]).to(p.dtype)[:, None, :]

    def _row_masks(self, w: float) -> tuple[list, list]:
        """Per layer, the rows' masks (`_width_masks`) for a pass at width w: [B, hq, 1, 1] and
        [B, 1, n]."""
        ws = sorted(set(self.row_widths))
        idx = torch.tensor([ws.index(r) for r in self.row_widths], device=self.row_w.device)
        tables = [self._width_masks(i, w, ws) for i in range(self.L)]
        return [h[idx] for h, _ in tables], [u[idx] for _, u in tables]

    def choose_width(self, idx: torch.Tensor) -> list[float]:
        """The LayerDimPredictor's pick for each prompt row: the smallest width whose predicted
        'good enough' probability, averaged over the predicted layers, is above 1/2 (else full).
        The first `predictor_layer` layers run at full width to read the prompt (a throwaway
        pass, no cache); the schedule is then uniform, the kind of schedule sandwich training
        teaches (measured: a per-layer mix after a full-width first layer scored worse than ghost)."""
        m, k = self.model, self.ecfg.predictor_layer
        x = m.embed(idx)
        for i in range(k):
            x = m.blocks[i](x, None, 1.0)
        probs = torch.sigmoid(m.elastic.predictor_logits(x.float().mean(1)))[:, k:].mean(1)  # [B, W]
        ws = m.elastic.widths
        return [next((w for w, p in zip(ws, row) if p > 0.5), 1.0) for row in probs.tolist()]

    def _copy_forward_flops(self, i: int, n_store: int | None = None) -> float:
        """FLOPs of a skipped layer's copy-forward: its K/V projections (M/K: the whole mixer)."""
        block = self.model.blocks[i]
        kv = self._kv_heads(i, n_store) if block.kind == "A" else 0
        return cost.copy_forward_flops(block, self.cfg.d_model, kv)

    def _copy_forward(self, i: int, h: torch.Tensor, rows: torch.Tensor | None = None) -> float:
        """CALM-style KV for a skipped layer: its input is the exit hidden state h (of `rows`
        only, in batched adaptive decoding, where the caller advances the cache)."""
        block = self.model.blocks[i]
        xn = block.norm1(h)
        if block.kind != "A":
            block.mixer(xn, self.state[i])
        else:
            block.mixer.write_kv(xn, self.state[i] if rows is None else RowView(self.state[i], rows))
        return self._copy_forward_flops(i)

    @torch.no_grad()
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """One token per sequence [batch, 1] through the model under the policy; returns logits
        [batch, V]. Stats are per step (every sequence of a fixed-width batch costs the same)."""
        if self.rows_mode:
            dense = self.dense if self.dense is not None else tok.device.type != "cpu"
            return self._step_dense(tok) if dense else self._step_rows(tok)
        m, pol, L = self.model, self.policy, self.L
        self.pos += 1
        ctx = self.pos
        x = m.embed(tok)
        flops, exit_at, expanded, used = 0.0, L - 1, False, []
        for i, block in enumerate(m.blocks):
            w = 1.0 if expanded else self.widths[i]
            x = block(x, self.state[i], w)
            flops += self._layer_flops(i, w, ctx)
            used.append(w)
            if not self._gate_at(i):
                continue
            g = float(torch.sigmoid(m.elastic.gate_logit(i, x, w)))
            flops += m.elastic.gate_flops
            if pol.exit_threshold is not None and g > pol.exit_threshold:
                exit_at = i
                for j in range(i + 1, L):
                    flops += self._copy_forward(j, x)
                break
            if (
                pol.expand_threshold is not None
                and not expanded
                and i + 1 >= L - self.ecfg.expand_layers
                and g < pol.expand_threshold
                and any(wj < 1.0 for wj in self.widths[i + 1 :])
            ):
                expanded = True
        logits = m.head(m.norm(x[:, -1]))
        head_flops = cost.head_flops(m)
        flops += head_flops
        s = self.stats
        s.head_flops.append(head_flops)
        s.flops.append(flops)
        s.full_flops.append(cost.token_flops(self.model, ctx))
        s.exit_layer.append(exit_at)
        s.expanded.append(expanded)
        s.widths.append(used)
        return logits

    def _step_rows(self, tok: torch.Tensor) -> torch.Tensor:
        """Batched adaptive step: the same decisions and logits as batch-1 `step` for every row
        (tests). Each layer runs its attention on every row at the shared width w_a
        (`_plan_rows`; rows of narrower widths masked down to theirs), exited rows reading their
        frozen exit state, which is their copy-forward K/V, so no cache is gathered; rows wider
        than w_a and expanded rows are recomputed on top as small groups through row views of
        the caches. The MLP runs on the live rows only. The wasted work (exited rows' queries
        and attention, narrow rows masked at w_a) is not charged: the FLOPs are batch-1's per
        token. Stats get one entry per row."""
        m, pol, L, B = self.model, self.policy, self.L, self.batch
        self.pos += 1
        ctx = self.pos
        x = m.embed(tok)
        dev = tok.device
        w_a, row_w = self.w_a, self.row_w
        live = torch.ones(B, dtype=torch.bool, device=dev)
        expanded = torch.zeros(B, dtype=torch.bool, device=dev)
        exit_at = torch.full((B,), L - 1, device=dev)
        ran_narrow = torch.full((B,), L, device=dev)  # layers run before an expansion to full width
        thr_exit = 2.0 if pol.exit_threshold is None else pol.exit_threshold  # 2: never
        thr_expand = -1.0 if pol.expand_threshold is None else pol.expand_threshold  # -1: never
        can_grow = row_w < 1.0
        any_expanded = False
        all_live = True  # no row has exited yet (Python flags spare a tensor op per check)
        for i, block in enumerate(m.blocks):
            cache = self.state[i]
            xn = block.norm1(x)
            mask_h = self.masks_a[0][i] if self.masks_a else None
            a = block.mixer(xn, RowView(cache, None), w_a, mask_h)  # every row, no gather
            groups = [(w, live & sel & ~expanded) for w, sel in self.wide]
            if any_expanded:
                groups.append((1.0, live & expanded))
            groups = [(w, sel.nonzero().flatten()) for w, sel in groups]
            groups = [(w, rows) for w, rows in groups if len(rows)]
            for w, rows in groups:  # wider rows: their own width, their rows' caches
                a = a.index_copy(0, rows, block.mixer(xn[rows], RowView(cache, rows), w))
            h = x + a
            mask_u = self.masks_a[1][i] if self.masks_a else None
            if not groups and all_live and not self.wide:
                x = h + block.mlp(block.norm2(h), w_a, mask_u)
            else:
                in_a = live & self.in_a & ~expanded if (self.wide or any_expanded) else live
                rows = in_a.nonzero().flatten()
                if len(rows):
                    hr = h[rows]
                    mu = mask_u[rows] if mask_u is not None else None
                    x = x.index_copy(0, rows, hr + block.mlp(block.norm2(hr), w_a, mu))
                for w, rows in groups:
                    hr = h[rows]
                    x = x.index_copy(0, rows, hr + block.mlp(block.norm2(hr), w))
            cache.advance(1)
            if not self._gate_at(i):
                continue
            g = torch.sigmoid(m.elastic.gate_logit(i, x, w_a))[:, -1]  # every row: cheaper than a gather
            others = [(w, live & sel & ~expanded) for w, sel in self.other_widths]
            if any_expanded:
                others.append((1.0, live & expanded))
            for w, sel in others:  # rows at another width read that width's gate
                rows = sel.nonzero().flatten()
                if len(rows):
                    g = g.index_copy(0, rows, torch.sigmoid(m.elastic.gate_logit(i, x[rows], w))[:, -1])
            if pol.exit_threshold is not None:
                go = live & (g > thr_exit)
                exit_at = torch.where(go, i, exit_at)
                live = live & ~go
                all_live = all_live and not bool(go.any())
            if pol.expand_threshold is not None and i + 1 >= L - self.ecfg.expand_layers:
                grow = live & (g < thr_expand) & ~expanded & can_grow
                if bool(grow.any()):
                    expanded = expanded | grow
                    ran_narrow = torch.where(grow, i + 1, ran_narrow)
                    any_expanded = True
            if not all_live and not bool(live.any()):
                for j in range(i + 1, L):  # everyone exited: only copy-forward K/V remains
                    self._copy_forward(j, x, None)
                break
        return self._finish_rows(m.head(m.norm(x[:, -1])), exit_at, ran_narrow, expanded, ctx)

    def _finish_rows(self, logits, exit_at, ran_narrow, expanded, ctx: int) -> torch.Tensor:
        """A batched adaptive step's per-row stats (batch-1's FLOPs for each row's path)."""
        B, head_flops = self.batch, cost.head_flops(self.model)
        full = cost.token_flops(self.model, ctx)
        s = self.stats
        paths: dict = {}  # (row width, exit layer, expansion layer) -> FLOPs
        for rw, e, k in zip(self.row_widths, exit_at.tolist(), ran_narrow.tolist()):
            if (rw, e, k) not in paths:
                paths[rw, e, k] = self._row_flops(rw, e, k, ctx) + head_flops
            s.flops.append(paths[rw, e, k])
            # layers before an expansion ran at the row's width, the rest at full width
            s.widths.append([rw] * min(k, e + 1) + [1.0] * max(0, e + 1 - k))
        s.head_flops += [head_flops] * B
        s.full_flops += [full] * B
        s.exit_layer += exit_at.tolist()
        s.expanded += expanded.tolist()
        return logits

    def _dense_plan(self, device) -> dict:
        """`_step_dense`'s tables, built once per prefill (a list copied to a GPU each step would
        wait for its queue): per layer the width every row runs at and each current width's
        query heads and MLP units; a row's current width is its own, or full once expanded."""
        L, widths = self.L, self.row_widths
        expand = self.policy.expand_threshold is not None and min(widths) < 1.0
        ws = sorted(set(widths) | {1.0})
        layers = []
        for i in range(L):
            grows = expand and i >= L - self.ecfg.expand_layers
            w = 1.0 if grows else max(widths)
            masks = self._width_masks(i, w, ws) if grows or len(set(widths)) > 1 else None
            layers.append((w, masks))
        return {
            "expand": expand,
            "idx": torch.tensor([ws.index(w) for w in widths], device=device),
            "full": len(ws) - 1,
            "w_cur": torch.tensor(ws, device=device),
            "gate_ws": sorted(set(widths) | ({1.0} if expand else set())),
            "layers": layers,
        }

    def _step_dense(self, tok: torch.Tensor) -> torch.Tensor:
        """`_step_rows` without row subsets, for GPUs: there a decoding step is bound by kernel
        launches and every host sync (a row subset's size, "has anyone exited") stalls the
        queue, so each layer runs on every row at one width (the widest row's; full width in
        the expandable layers when expansion is on), each row masked down to its current width,
        exited rows kept by `torch.where` (their attention pass is their copy-forward K/V), and
        every decision stays on the device until the step's stats. Same decisions and logits
        as batch-1 decoding up to float rounding (tests force this path on a CPU)."""
        m, pol, L, B = self.model, self.policy, self.L, self.batch
        self.pos += 1
        ctx = self.pos
        x = m.embed(tok)
        dev = tok.device
        plan = self.dense_plan = self.dense_plan or self._dense_plan(dev)
        live = torch.ones(B, dtype=torch.bool, device=dev)
        expanded = torch.zeros(B, dtype=torch.bool, device=dev)
        exit_at = torch.full((B,), L - 1, device=dev)
        ran_narrow = torch.full((B,), L, device=dev)
        can_grow = self.row_w < 1.0
        for i, block in enumerate(m.blocks):
            w, masks = plan["layers"][i]
            cur = torch.where(expanded, plan["full"], plan["idx"])
            mask_h, mask_u = (masks[0][cur], masks[1][cur]) if masks else (None, None)
            h = x + block.mixer(block.norm1(x), RowView(self.state[i], None), w, mask_h)
            x = torch.where(live[:, None, None], h + block.mlp(block.norm2(h), w, mask_u), x)
            self.state[i].advance(1)
            if not self._gate_at(i):
                continue
            cw = plan["w_cur"][cur]
            g = torch.zeros(B, device=dev)
            for gw in plan["gate_ws"]:  # each row reads its current width's gate
                g = torch.where(cw == gw, torch.sigmoid(m.elastic.gate_logit(i, x, gw)[:, -1]).float(), g)
            if pol.exit_threshold is not None:
                go = live & (g > pol.exit_threshold)
                exit_at = torch.where(go, i, exit_at)
                live = live & ~go
            if plan["expand"] and i + 1 >= L - self.ecfg.expand_layers:
                grow = live & (g < pol.expand_threshold) & ~expanded & can_grow
                expanded = expanded | grow
                ran_narrow = torch.where(grow, i + 1, ran_narrow)
        return self._finish_rows(m.head(m.norm(x[:, -1])), exit_at, ran_narrow, expanded, ctx)

    def _gate_at(self, i: int) -> bool:
        """Is the gate read after layer i: with exits after every layer but the last, with
        expansion only where it can still act (the layer before each of the last
        `expand_layers`), else never; an unread gate costs nothing."""
        pol, L = self.policy, self.L
        if i >= L - 1:
            return False
        if pol.exit_threshold is not None:
            return True
        return pol.expand_threshold is not None and i + 1 >= L - self.ecfg.expand_layers

    def _row_flops(self, rw: float, e: int, k: int, ctx: int) -> float:
        """Batch-1's FLOPs for a row of width rw that exited after layer e (L-1: never) and ran
        full width from layer k on (L: never expanded), the LM head left out."""
        f = 0.0
        for i in range(self.L):
            n = self._stored_heads(i, rw)
            if i > e:
                f += self._copy_forward_flops(i, n)
                continue
            f += self._layer_flops(i, rw if i < k else 1.0, ctx, n)
            if self._gate_at(i):
                f += self.model.elastic.gate_flops
        return f

    def kv_bytes(self) -> tuple[int, int]:
        """(bytes held by the Matryoshka caches, bytes a full-width cache would hold)."""
        caches = [c for c in self.state if isinstance(c, KVCache)]
        return sum(c.nbytes() for c in caches), sum(c.full_nbytes() for c in caches)


@torch.no_grad()
def generate(
    model,
    idx: torch.Tensor,
    mode: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    stop_ids: set[int] | None = None,
    generator: torch.Generator | None = None,
    runner_out: list | None = None,
):
    """LM.generate under a compute mode (batch 1): yields token ids [1]; the runner (with its
    per-token stats) is appended to `runner_out` when given."""
    ecfg = model_ecfg(model)
    r = ElasticRunner(model, ecfg, mode_policy(mode, model, ecfg))
    if runner_out is not None:
        runner_out.append(r)
    logits = r.prefill(idx)
    for _ in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, generator)
        yield nxt
        if stop_ids and int(nxt[0]) in stop_ids:
            return
        logits = r.step(nxt[:, None])
