"""The five workloads of benches/cpu.rs in PyTorch, for side-by-side runs (see benches/compare/run.sh).

Each workload runs WARMUP untimed iterations, then REPEATS timed ones; the figure is the median time of one
iteration in milliseconds. The counts, shapes and models mirror `table_mode` in benches/cpu.rs: change both
together, or the comparison stops being like for like.

Usage: python benches/compare/torch_cpu.py [--tsv] [--threads N] [--only NAME]
"""

import argparse
import math
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    sys.exit("torch_cpu.py: PyTorch is not installed in this Python (set PYTHON=/path/to/python with torch)")

# (name, warmup, repeats): identical to WORKLOADS in benches/cpu.rs.
WORKLOADS = [
    ("sgemm_1024", 5, 30),
    ("softmax_fwd_bwd_8192x768", 5, 30),
    ("layer_norm_fwd_bwd_8192x768", 5, 30),
    ("mlp_train_step_b128", 10, 50),
    ("char_gpt_train_step", 3, 15),
]

# The char-GPT bench model: 4 pre-LN blocks, 128 wide, 4 heads, context 64, batch 32, 65 symbols.
GPT_LAYERS, GPT_WIDTH, GPT_HEADS, GPT_T, GPT_B, GPT_VOCAB = 4, 128, 4, 64, 32, 65


def sgemm():
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    return lambda: torch.mm(a, b)


def softmax_fwd_bwd():
    x = torch.randn(8192, 768, requires_grad=True)
    g = torch.randn(8192, 768)

    def step():
        x.grad = None
        torch.softmax(x, dim=-1).backward(g)

    return step


def layer_norm_fwd_bwd():
    x = torch.randn(8192, 768, requires_grad=True)
    g = torch.randn(8192, 768)
    w = torch.ones(768, requires_grad=True)
    b = torch.zeros(768, requires_grad=True)

    def step():
        x.grad = w.grad = b.grad = None
        F.layer_norm(x, (768,), w, b, 1e-5).backward(g)

    return step


def mlp_train_step():
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(128, 784)
    y = torch.randint(0, 10, (128,))

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


class Block(nn.Module):
    """Pre-LN transformer block: fused QKV, causal attention spelled out (matmul, masked_fill, softmax)."""

    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(c)
        self.c_attn = nn.Linear(c, 3 * c)
        self.attn_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c)
        self.c_fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)

    def forward(self, x, masked):
        b, t, c = x.shape
        hd = c // self.heads
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, hd).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = torch.softmax(att.masked_fill(masked, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class CharGpt(nn.Module):
    """Token + learned position embeddings, pre-LN blocks, final LayerNorm, head tied to the token table."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(GPT_VOCAB, GPT_WIDTH)
        self.wpe = nn.Embedding(GPT_T, GPT_WIDTH)
        self.blocks = nn.ModuleList(Block(GPT_WIDTH, GPT_HEADS) for _ in range(GPT_LAYERS))
        self.ln_f = nn.LayerNorm(GPT_WIDTH)
        # True above the diagonal: the positions a query may not see.
        self.register_buffer("masked", torch.ones(GPT_T, GPT_T, dtype=torch.bool).triu(1))

    def forward(self, idx):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for blk in self.blocks:
            x = blk(x, self.masked[:t, :t])
        return F.linear(self.ln_f(x), self.wte.weight)


def char_gpt_train_step():
    model = CharGpt()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    x = torch.randint(0, GPT_VOCAB, (GPT_B, GPT_T))
    y = torch.randint(0, GPT_VOCAB, (GPT_B, GPT_T))

    def step():
        opt.zero_grad()
        logits = model(x)
        F.cross_entropy(logits.view(-1, GPT_VOCAB), y.view(-1)).backward()
        opt.step()

    return step


SETUP = {
    "sgemm_1024": sgemm,
    "softmax_fwd_bwd_8192x768": softmax_fwd_bwd,
    "layer_norm_fwd_bwd_8192x768": layer_norm_fwd_bwd,
    "mlp_train_step_b128": mlp_train_step,
    "char_gpt_train_step": char_gpt_train_step,
}


def median_ms(step, warmup, repeats):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tsv", action="store_true", help="print `name<TAB>ms` lines only")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--only", help="run only the workload with this name")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.tsv:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, warmup, repeats in WORKLOADS:
        if args.only and args.only != name:
            continue
        ms = median_ms(SETUP[name](), warmup, repeats)
        print(f"{name}\t{ms:.3f}" if args.tsv else f"{name:32} {ms:10.3f} ms")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
