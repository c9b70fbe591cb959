"""PyTorch eager side of the GPU GPT throughput comparison (shakespeare-char shape).

The model is nanoGPT's shakespeare-char configuration, the shape munja's `--preset shakespeare-char`
trains: 6 layers, 6 heads, 384 wide, context 256, vocabulary 65, dropout 0.2, batch 64, AdamW (fused)
with gradient clipping at 1.0, bf16 autocast or plain f32 (TF32 off). Batches are random tokens: only the
speed is measured here (munja's convergence run is `examples/gpt.rs`).

Run it on the GPU machine beside munja's GPT example, in the same call, so both see the same card:

    python3 benches/compare/torch_gpt_gpu.py --dtype bf16 --steps 200

Prints `torch_gpt <dtype> ms_per_step <ms> tokens_per_s <n>` (median step of the timed steps; each step
ends with `loss.item()`, as munja's training loop reads its loss every step).
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, heads, dropout):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.fc, self.fc_proj = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).contiguous().view(b, t, c)))
        return x + self.drop(self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh")))


class Gpt(nn.Module):
    def __init__(self, vocab=65, ctx=256, layers=6, heads=6, c=384, dropout=0.2):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, c), nn.Embedding(ctx, c)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(c, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(c)
        self.head = nn.Linear(c, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as munja's GPT

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.drop(self.tok(idx) + self.pos(torch.arange(t, device=idx.device)))
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--steps", type=int, default=200, help="timed steps (after 20 warm-up steps)")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False")
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    dev = "cuda"
    model = Gpt().to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.99), fused=True,
    )
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if args.dtype == "bf16" else torch.autocast("cuda", enabled=False)
    x = torch.randint(0, 65, (args.batch, 256), device=dev)
    y = torch.randint(0, 65, (args.batch, 256), device=dev)

    def step():
        with ctx:
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(20):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    assert math.isfinite(loss)
    ms = statistics.median(times) * 1e3
    print(f"torch_gpt {args.dtype} ms_per_step {ms:.2f} tokens_per_s {args.batch * 256 / (ms / 1e3):.0f} "
          f"(torch {torch.__version__}, {torch.cuda.get_device_name(0)})")


if __name__ == "__main__":
    main()
