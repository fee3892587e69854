#!/usr/bin/env python3
"""Train the small byte-level Mamba2 shipped in corpus/models/bytes/ (issue 6, item 6).

The model reads raw bytes (vocab_size 256, token id == byte value, no BOS/EOS) and is trained
on public-domain English text shipped in corpus/text/ (see corpus/text/README.md), so that
steering demos ("The cat sat on the" -> " dog") act on a model with real English byte
statistics rather than on random weights.

Everything runs on CPU through HuggingFace transformers' pure-torch Mamba2 path
(``Mamba2ForCausalLM``; no fused kernels). The training steps by default swap HF's chunk-scan
function for an einsum rewrite of the same computation (``--scan einsum``, 2-3x faster on CPU;
checked against HF's before training); ``--scan hf`` trains with HF's own. Evaluation and the
samples always use HF's own code. Training is seeded: the model init
(``torch.manual_seed``) and the batch sampler (a ``torch.Generator``) both derive from
``--seed``. Given the same seed, step count, thread count and torch/transformers versions the
run is repeatable; bitwise reproducibility across torch versions or thread counts is *not*
promised (CPU reduction order changes with both).

The text is split once: the last ``--heldout-frac`` of the file (cut at a line boundary) is
held out and never trained on; the reported held-out loss is the mean next-byte cross
entropy in nats/byte over non-overlapping windows of that tail.

Usage:
  tools/train_byte_model.py [--steps 90] [--seed 0] [--threads 2]
                            [--text corpus/text/persuasion.txt] [--out corpus/models/bytes]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import Mamba2Config, Mamba2ForCausalLM
from transformers.models.mamba2 import modeling_mamba2

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEXT = ROOT / "corpus" / "text" / "persuasion.txt"
DEFAULT_OUT = ROOT / "corpus" / "models" / "bytes"

DEMO_PROMPT, DEMO_TARGET = "The cat sat on the", " dog"
SAMPLE_PROMPTS = [
    "The cat sat on the",
    "Captain Wentworth ",
    "Anne Elliot ",
    "She could not ",
]


HF_CHUNK_SCAN = modeling_mamba2.mamba2_chunk_scan


def einsum_chunk_scan(hidden_states, dt, A, B, C, chunk_size, D=None, dt_bias=None, initial_states=None,
                      dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False, **kwargs):
    """HF's ``mamba2_chunk_scan`` (transformers 5.17, torch fallback) with its broadcast-multiply-sum
    contractions written as einsums (batched matmuls). Same chunking, same segment_sum, same fp32
    math, same signature and result up to float rounding; 2-3x faster on CPU because it does not
    materialise the [b, c, l, l, h, p] intermediates. Used only for training steps (--scan einsum);
    evaluation and the greedy samples always run HF's own function."""
    b, T, h, p = hidden_states.shape
    g = B.shape[2]
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1]).float()
    x = hidden_states.float()
    B = B.float().repeat_interleave(h // g, dim=2, output_size=h)
    C = C.float().repeat_interleave(h // g, dim=2, output_size=h)
    pad = (chunk_size - T % chunk_size) % chunk_size
    d_res = D[..., None] * modeling_mamba2.pad_tensor_by_size(x, pad) if D is not None else None
    xdt = x * dt[..., None]
    a_dt = A.float() * dt
    xdt, a_dt, B, C = [modeling_mamba2.reshape_into_chunks(t, pad, chunk_size) for t in (xdt, a_dt, B, C)]
    a_dt = a_dt.permute(0, 3, 1, 2)  # [b, h, c, l]
    a_cum = torch.cumsum(a_dt, dim=-1)
    L = torch.exp(modeling_mamba2.segment_sum(a_dt))  # [b, h, c, l, s]
    G = torch.einsum("bclhn,bcshn->bhcls", C, B)
    y_diag = torch.einsum("bhcls,bcshp->bclhp", G * L, xdt)
    decay_states = torch.exp(a_cum[..., -1:] - a_cum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, xdt)
    prev = (initial_states[:, None].to(states.dtype) if initial_states is not None
            else torch.zeros_like(states[:, :1]))
    states = torch.cat([prev, states], dim=1)
    decay_chunk = torch.exp(modeling_mamba2.segment_sum(F.pad(a_cum[:, :, :, -1], (1, 0))))  # [b, h, z, c]
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, torch.exp(a_cum))
    y = (y_diag + y_off).reshape(b, -1, h, p)
    if d_res is not None:
        y = y + d_res
    if pad > 0:
        y = y[:, :T]
    return (y, final_state) if return_final_states else y


def use_scan(name: str) -> None:
    modeling_mamba2.mamba2_chunk_scan = einsum_chunk_scan if name == "einsum" else HF_CHUNK_SCAN


def check_einsum_scan(model: Mamba2ForCausalLM, batch: torch.Tensor) -> float:
    """Max |logit difference| between HF's scan and the einsum scan on one batch; fails above 1e-3."""
    with torch.no_grad():
        use_scan("hf")
        ref = model(input_ids=batch, use_cache=False).logits
        use_scan("einsum")
        got = model(input_ids=batch, use_cache=False).logits
    diff = (ref - got).abs().max().item()
    if not diff <= 1e-3:
        raise SystemExit(f"einsum scan disagrees with HF's mamba2_chunk_scan: max |dlogit| {diff}")
    return diff


def model_config(args: argparse.Namespace) -> Mamba2Config:
    d_inner = args.expand * args.hidden_size
    return Mamba2Config(
        vocab_size=256,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        state_size=args.state_size,
        expand=args.expand,
        head_dim=args.head_dim,
        num_heads=d_inner // args.head_dim,
        n_groups=args.n_groups,
        chunk_size=64,
        conv_kernel=4,
        use_bias=False,
        use_conv_bias=True,
        residual_in_fp32=True,
        tie_word_embeddings=True,
        # time_step_limit left at its default (0.0, inf)
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def split_text(data: bytes, heldout_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    cut = int(len(data) * (1.0 - heldout_frac))
    nl = data.rfind(b"\n", 0, cut)
    if nl > 0:
        cut = nl + 1
    as_ids = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).long()
    return as_ids(data[:cut]), as_ids(data[cut:])


def lm_loss(model: Mamba2ForCausalLM, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross entropy (nats) of batch [B, T+1]."""
    logits = model(input_ids=batch[:, :-1], use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1)
    )


@torch.no_grad()
def evaluate(model: Mamba2ForCausalLM, ids: torch.Tensor, seq_len: int, batch_size: int) -> float:
    """Mean next-byte loss over non-overlapping windows of ids (the last partial window dropped).
    Always HF's own scan."""
    saved = modeling_mamba2.mamba2_chunk_scan
    use_scan("hf")
    model.eval()
    n = (len(ids) - 1) // seq_len
    windows = torch.stack([ids[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        b = windows[i : i + batch_size]
        total += lm_loss(model, b).item() * b.shape[0]
        count += b.shape[0]
    model.train()
    modeling_mamba2.mamba2_chunk_scan = saved
    return total / count


@torch.no_grad()
def greedy(model: Mamba2ForCausalLM, prompt: str, n_new: int) -> str:
    """Greedy continuation with HF's own code, recomputing the full sequence each step (no cache)."""
    use_scan("hf")
    model.eval()
    ids = list(prompt.encode("utf-8"))
    for _ in range(n_new):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
        ids.append(int(logits.argmax()))
    model.train()
    return bytes(ids[len(prompt.encode("utf-8")) :]).decode("utf-8", errors="replace")


@torch.no_grad()
def target_logprob(model: Mamba2ForCausalLM, prompt: str, target: str) -> tuple[float, list[int]]:
    """log p(target | prompt) in nats (sum over the target's bytes) and each target byte's rank
    (0 = the argmax) under teacher forcing, with HF's own code."""
    use_scan("hf")
    model.eval()
    p, t = list(prompt.encode("utf-8")), list(target.encode("utf-8"))
    logp = torch.log_softmax(model(input_ids=torch.tensor([p + t]), use_cache=False).logits[0].float(), -1)
    model.train()
    total, ranks = 0.0, []
    for i, tok in enumerate(t):
        row = logp[len(p) - 1 + i]
        total += row[tok].item()
        ranks.append(int((row > row[tok]).sum()))
    return total, ranks


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="training text file (bytes are tokens)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint directory (save_pretrained)")
    p.add_argument("--steps", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (affects bitwise results)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--heldout-frac", type=float, default=0.05)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--state-size", type=int, default=16)
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--n-groups", type=int, default=1)
    p.add_argument("--scan", choices=["einsum", "hf"], default="einsum",
                   help="chunk scan used for training steps: 'hf' = transformers' own torch fallback, "
                        "'einsum' = the same computation with einsum contractions (faster; checked against "
                        "'hf' before training). Evaluation and samples always use 'hf'.")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--sample-bytes", type=int, default=60, help="greedy continuation length per prompt")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = args.text.read_bytes()
    train_ids, held_ids = split_text(data, args.heldout_frac)
    print(f"text {args.text} : {len(data)} bytes, train {len(train_ids)}, held-out {len(held_ids)}")

    config = model_config(args)
    model = Mamba2ForCausalLM(config)
    model.train()
    n_params = sum(t.numel() for t in model.parameters())
    print(f"params {n_params} ({n_params * 4 / 1e6:.2f} MB fp32)")

    decay, no_decay = [], []
    for name, t in model.named_parameters():
        (decay if t.dim() >= 2 else no_decay).append(t)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(args.seed)
    span = args.seq_len + 1
    offsets = torch.arange(span)

    if args.scan == "einsum":
        probe = train_ids[: 2 * args.seq_len].view(2, args.seq_len)
        print(f"einsum scan vs HF scan on a probe batch: max |dlogit| {check_einsum_scan(model, probe):.2e}")
    use_scan(args.scan)

    t0 = time.perf_counter()
    c0 = time.process_time()
    recent = []
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        starts = torch.randint(0, len(train_ids) - span, (args.batch_size,), generator=gen)
        batch = train_ids[starts[:, None] + offsets]
        loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            el, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"step {step + 1:5d}  loss {sum(recent) / len(recent):.4f}  lr {lr_at(step, args):.2e}"
                  f"  wall {el:6.1f}s  cpu {cpu:6.1f}s  load {os.getloadavg()[0]:.1f}", flush=True)
            recent = []
    train_time = time.perf_counter() - t0
    train_cpu = time.process_time() - c0
    use_scan("hf")

    t1 = time.perf_counter()
    train_loss = evaluate(model, train_ids[-len(held_ids):], args.seq_len, 32)  # same-size train tail
    held_loss = evaluate(model, held_ids, args.seq_len, 32)
    print(f"train time {train_time:.1f}s wall, {train_cpu:.1f}s CPU (load avg now {os.getloadavg()[0]:.1f}), eval {time.perf_counter() - t1:.1f}s")
    print(f"final loss (nats/byte): train-tail {train_loss:.4f}  held-out {held_loss:.4f}  "
          f"(uniform {math.log(256):.4f})")

    samples = [(pr, greedy(model, pr, args.sample_bytes)) for pr in SAMPLE_PROMPTS]
    for pr, cont in samples:
        print(f"greedy {pr!r} -> {cont!r}")
    demo = target_logprob(model, DEMO_PROMPT, DEMO_TARGET)
    print(f"log p({DEMO_TARGET!r} | {DEMO_PROMPT!r}) = {demo[0]:.3f} nats, per-byte ranks {demo[1]}")
    timing = dict(wall=train_time, cpu=train_cpu, load=os.getloadavg())

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    write_training_md(args, n_params, timing, train_loss, held_loss, samples, demo, len(data),
                      len(train_ids), len(held_ids))
    print(f"wrote {args.out}")
    return 0


def write_training_md(args, n_params, timing, train_loss, held_loss, samples, demo, n_bytes, n_train, n_held):
    try:
        text_rel = args.text.resolve().relative_to(ROOT)
    except ValueError:
        text_rel = args.text
    try:
        out_rel = args.out.resolve().relative_to(ROOT)
    except ValueError:
        out_rel = args.out
    argv = " ".join(sys.argv[1:])
    lines = [
        "# corpus/models/bytes — byte-level Mamba2 trained on public-domain text",
        "",
        "Written by `tools/train_byte_model.py`; do not edit by hand (rerun the tool).",
        "",
        "Tokens are raw bytes: `vocab_size` 256, token id = byte value, no BOS/EOS. Encode a",
        "prompt with `list(prompt.encode('utf-8'))`.",
        "",
        "## How it was made",
        "",
        "```",
        f"$HOME/.cache/mambadiff/venv/bin/python tools/train_byte_model.py {argv}".rstrip(),
        "```",
        "",
        f"* text: `{text_rel}` ({n_bytes} bytes; train {n_train}, held-out tail {n_held}) — Jane",
        "  Austen, *Persuasion* (1818), public domain; source and status in `corpus/text/README.md`",
        f"* seed {args.seed}, {args.steps} steps, batch {args.batch_size} x {args.seq_len} bytes,"
        f" AdamW lr {args.lr:g} (warmup {args.warmup}, cosine to {args.min_lr_frac:g}x),"
        f" weight decay {args.weight_decay:g}, grad clip 1.0",
        f"* model: hidden {args.hidden_size}, {args.layers} layers, expand {args.expand}, head_dim"
        f" {args.head_dim}, n_groups {args.n_groups}, state {args.state_size}, chunk 64, conv 4,"
        f" tied embeddings, time_step_limit (0, inf); {n_params} parameters, float32",
        f"* trained on CPU with {args.threads} threads through transformers' `Mamba2ForCausalLM` (no fused"
        f" kernels), chunk scan `--scan {args.scan}`"
        + (" (HF's `mamba2_chunk_scan` rewritten with einsums, checked against it before training;"
           " evaluation and samples use HF's own)" if args.scan == "einsum" else " (HF's own)") + ";"
        f" torch {torch.__version__}, transformers {transformers.__version__}",
        f"* training time: {timing['wall']:.0f} s wall, {timing['cpu']:.0f} s process CPU time (both threads"
        f" together), on a {os.cpu_count()}-CPU {platform.machine()} machine shared with other work (load"
        f" average {timing['load'][1]:.1f} over the last 5 min); wall time varies with that load",
        f"* final loss, nats/byte (uniform = ln 256 = {math.log(256):.3f}): train tail"
        f" {train_loss:.4f}, held-out {held_loss:.4f}",
        "",
        "Training is deterministic given seed, step count and thread count, but bitwise",
        "reproducibility of the weights depends on the torch version and the number of threads",
        "(CPU reduction order); a retrained checkpoint may differ in the last bits.",
        "",
        f"## Greedy continuations ({args.sample_bytes} bytes, full recompute, no cache)",
        "",
    ]
    for pr, cont in samples:
        lines.append(f"* `{pr!r}` → `{cont!r}`")
    lines += [
        "",
        "## The steering demo's target",
        "",
        f"log p({DEMO_TARGET!r} | {DEMO_PROMPT!r}) = {demo[0]:.3f} nats (teacher-forced, HF code); rank of each"
        f" target byte among the 256 (0 = greedy choice): {demo[1]}.",
        "",
    ]
    (args.out / "TRAINING.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
