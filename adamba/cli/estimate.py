"""`adamba estimate`: hours, tokens and dollars per phase of a plan, before renting a GPU."""

from __future__ import annotations

import argparse
import math

from adamba.errors import AdambaError

EXAMPLES = """examples:
  # a config's phases on 8 H200 at $1.96 per GPU-hour, 40% MFU
  adamba estimate --config plan-d32 --gpus 8 --gpu h200 --price 1.96

  # a plan given in hours (as the original Adamba plan is): the tokens each phase's hours buy
  adamba estimate --config plan-d32 --config plan-d2560 --config plan-d4096 \\
      --gpus 8 --gpu h200 --price 1.96 --hours mamba=15 --hours matryoshka=12

  # is a claimed throughput plausible? the MFU 77k tokens/s implies (GPT-OSS-20B + Mamba2: MoE layers, top-4 of 32)
  adamba estimate --config plan-gptoss --gpus 8 --gpu h200 --tokens-per-s 77000
"""


def positive(args: argparse.Namespace, *flags: str) -> None:
    """Each given flag a finite number > 0, or one line naming it."""
    for flag in flags:
        v = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if v is not None and not (math.isfinite(v) and v > 0):
            raise AdambaError(f"{flag} {v:g} must be a finite number > 0")


def parse_moe(text: str | None):
    """E:K[:UNITS] -> MoE (None: no MoE)."""
    from adamba.model.flops import MoE

    if text is None:
        return None
    try:
        nums = [int(p) for p in text.split(":")]
    except ValueError:
        nums = []
    if len(nums) not in (2, 3) or min(nums) < 1 or nums[1] > nums[0]:
        raise AdambaError(
            f"--moe {text!r}: use EXPERTS:TOP_K[:UNITS] with 1 <= TOP_K <= EXPERTS, e.g. 32:4 or 32:4:2880"
        )
    return MoE(*nums)


def run(args: argparse.Namespace) -> None:
    from adamba.train import estimate as est

    if args.gpus < 1:  # every flag is checked before a config is read
        raise AdambaError(f"--gpus {args.gpus} must be >= 1")
    positive(args, "--price", "--peak-tflops", "--tokens-per-s")
    moe = parse_moe(args.moe)
    gpu = args.gpu.lower()
    if args.peak_tflops is None and gpu not in est.GPUS:
        raise AdambaError(
            f"--gpu {args.gpu!r}: unknown GPU (known: {', '.join(est.GPUS)}); "
            "give its dense bf16 peak with --peak-tflops N"
        )
    if not 0 < args.mfu <= 1:
        raise AdambaError(f"--mfu {args.mfu:g}: use a fraction in (0, 1], e.g. 0.4")
    peak = args.peak_tflops if args.peak_tflops is not None else est.GPUS[gpu]
    cluster = est.Cluster(args.gpus, peak, args.mfu, args.price)
    hours = est.parse_hours(args.hours or [])
    configs = est.load_all(args.config, list(args.set or []))
    rows = est.estimate(configs, cluster, hours, moe)
    print("\n".join(est.table(rows, cluster, gpu, args.tokens_per_s, moe)))


def register(sub) -> None:
    p = sub.add_parser(
        "estimate",
        help="hours, tokens and cost of a phase plan on N GPUs (FLOPs counted on the model, not 6N)",
        description="Price a phase plan before training it: per phase the FLOPs of a training token "
        "(counted on the model built without memory: attention, Mamba2/KDA, MoE; frozen layers below "
        "the first trained one cost their forward only), its tokens, hours = tokens x FLOPs / (GPUs x "
        "peak x MFU), and cost = hours x GPUs x price. Phases priced in hours (--hours) show the tokens "
        "those hours buy; --tokens-per-s shows the MFU a measured or claimed throughput implies. "
        "Nothing is trained and no data is read.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        action="append",
        required=True,
        help="TOML file or preset name; repeat for a plan that changes model (surgery) between configs",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="GPUs, one training process each (default 1): a phase given in steps trains steps x batch x "
        "seq_len x grad_accum x GPUs tokens, as under torchrun --nproc_per_node=GPUS",
    )
    p.add_argument(
        "--gpu", default="h100", help="GPU model for the peak FLOP/s (h100, h200, a100, l40s, 4090, mi300x)"
    )
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak per GPU, overriding --gpu's")
    p.add_argument("--price", type=float, help="$ per GPU-hour (no cost column without it)")
    p.add_argument(
        "--mfu", type=float, default=0.4, help="model FLOPs utilization assumed for time (default 0.4)"
    )
    p.add_argument(
        "--hours",
        action="append",
        metavar="PHASE=H",
        help="price phase PHASE (or CONFIG:PHASE) as H hours and print the tokens they buy (repeatable)",
    )
    p.add_argument(
        "--tokens-per-s",
        type=float,
        help="a cluster-wide throughput: print the MFU it implies for each phase",
    )
    p.add_argument(
        "--moe",
        metavar="E:K[:UNITS]",
        help="price every dense MLP as top-K of E experts of UNITS hidden units (default: the MLP's) + router "
        '(a what-if; model.ffn = "moe" layers are counted as they are)',
    )
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value in every config"
    )
    p.set_defaults(func=run)
