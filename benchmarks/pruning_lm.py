"""Layer-pruning benchmark on a small LLaMA-style LM trained from scratch on BBC News text.

    python benchmarks/pruning_lm.py            # first run ~17 min on 2 shared cores (10 of it training,
                                               # cached in benchmarks/.cache/), then ~4 min
    python benchmarks/pruning_lm.py --remove 4 --methods block_influence,merge --healing-steps 0

What it does
  1. tokenises BBC News with the bundled MiniLM WordPiece tokenizer and remaps it to the 4,094
     most frequent training tokens (+ [PAD], [UNK]) to keep the embedding small;
  2. trains an 8-block LLaMA (hidden 128, 4 heads, MLP 384) from scratch on the training split
     (the same seeded 70/10/20 split the classification pipeline uses) and caches it under
     benchmarks/.cache/bbc_llama/;
  3. removes 25 % of the blocks (2 of 8) with every method, one-shot and iterative, with and
     without Prune&Comp compensation, choosing on 32 calibration sequences from the training
     split (the task-metric method scores on 16 dev sequences from the validation split);
  4. prints validation perplexity on the rest of the validation split (disjoint from that dev
     set), the wall time and the modelled energy (CpuModelMeter) of the pruning step, and of
     evaluating the pruned model.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.ml import hf, metrics
from greenknobs.ml.pruning import METHODS, Calibration, prune
from greenknobs.ml.pruning.healing import heal
from pipelines.text_data import encode_labels, load_bbc_news

CACHE = Path(__file__).resolve().parent / ".cache"
SEQ = 128
VOCAB = 4096  # 0 = [PAD], 1 = [UNK], then the most frequent training tokens
CONFIG = dict(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4,
              intermediate_size=384, max_position_embeddings=SEQ, tie_word_embeddings=False, pad_token_id=0,
              bos_token_id=None, eos_token_id=None)


def corpus() -> dict[str, list[list[int]]]:
    """Fixed-length 128-token chunks of each split, in the remapped vocabulary (cached)."""
    path = CACHE / "bbc_lm_corpus.json"
    if path.is_file():
        return json.loads(path.read_text())
    examples = load_bbc_news()
    encode_labels(examples)  # integer topics, for the stratified split
    train, val, test = metrics.stratified_split(examples, (0.7, 0.1, 0.2), seed=0)
    tok = hf.load_tokenizer(hf.bundled_minilm_dir())
    enc = {name: tok([e["text"] for e in part], add_special_tokens=False)["input_ids"]
           for name, part in (("train", train), ("validation", val), ("test", test))}
    freq = Counter(t for ids in enc["train"] for t in ids)
    remap = {t: i + 2 for i, (t, _) in enumerate(freq.most_common(VOCAB - 2))}
    out = {}
    for name, docs in enc.items():
        stream = [remap.get(t, 1) for ids in docs for t in ids]
        out[name] = [stream[i : i + SEQ] for i in range(0, len(stream) - SEQ + 1, SEQ)]
    unk = sum(t == 1 for c in out["validation"] for t in c) / max(1, sum(len(c) for c in out["validation"]))
    out["unk_rate_validation"] = [[round(unk * 1e4)]]
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def batches(chunks: list[list[int]], batch_size: int) -> Calibration:
    out = []
    for s in range(0, len(chunks), batch_size):
        ids = torch.tensor(chunks[s : s + batch_size])
        out.append((ids, torch.ones_like(ids)))
    return Calibration(out)


def train_or_load(data, steps: int, meter: CpuModelMeter):
    ckpt = CACHE / "bbc_llama"
    if (ckpt / "config.json").is_file():
        return hf.load_pretrained_like(hf.llama_lm_from_config(**CONFIG), ckpt), json.loads((ckpt / "train.json").read_text())
    torch.manual_seed(0)
    model = hf.llama_lm_from_config(**CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    train = torch.tensor(data["train"])
    model.train()
    with meter.window("train") as w:
        for step in range(steps):
            ids = train[torch.randint(len(train), (16,), generator=gen)]
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step % 100 == 0:
                print(f"  train step {step:4d}  loss {loss.item():.3f}", flush=True)
    model.eval()
    info = {"steps": steps, "batch": 16, "seq": SEQ, "final_loss": loss.item(),
            "train_s": w.measurement.time_s, "train_energy_j_modelled": w.measurement.energy_j}
    hf.save_pretrained(model, ckpt)
    (ckpt / "train.json").write_text(json.dumps(info))
    return model, info


def extra_training(model, data: Calibration, steps: int, lr: float) -> None:
    """``steps`` AdamW steps of next-token loss on ``data`` batches (cycled), as healing takes."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        ids, mask = data.batches[step % len(data.batches)]
        loss = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


@torch.no_grad()
def perplexity(model, data: Calibration) -> float:
    model.eval()
    total, n = 0.0, 0
    for ids, mask in data.batches:
        loss = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss
        total += loss.item() * ids.shape[0] * (ids.shape[1] - 1)
        n += ids.shape[0] * (ids.shape[1] - 1)
    return math.exp(total / n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--remove", type=int, default=2)
    ap.add_argument("--healing-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="1 keeps CPU-seconds (hence modelled energy) stable on a shared box")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    meter = CpuModelMeter()
    data = corpus()
    model, info = train_or_load(data, args.train_steps, meter)
    calib = batches(data["train"][::max(1, len(data["train"]) // 32)][:32], 8)
    dev = batches(data["validation"][:16], 8)
    held = batches(data["validation"][16:144], 16)
    print(f"model: 8-block LLaMA, {sum(p.numel() for p in model.parameters())/1e6:.2f} M params, trained "
          f"{info['steps']} steps x 16 x {SEQ} tokens in {info['train_s']:.0f} s ({info['train_energy_j_modelled']:.0f} J modelled)")
    print(f"calibration: {calib.n_samples} x {SEQ} tokens (train split); dev for iterative_metric: {dev.n_samples} seqs; "
          f"perplexity on {held.n_samples} held-out validation seqs; [UNK] rate {data['unk_rate_validation'][0][0]/100:.2f} %")
    with meter.window("eval") as w:
        base = perplexity(model, held)
    print(f"\nunpruned: validation perplexity {base:.2f}  (eval {w.measurement.time_s:.1f} s, {w.measurement.energy_j:.1f} J modelled)\n")
    header = f"{'method':<17}{'mode':<10}{'comp':<6}{'removed':<10}{'alpha':<14}{'val ppl':>9}{'prune s':>9}{'prune J':>9}{'eval J':>8}"
    print(header + "\n" + "-" * len(header))
    rows = []
    for method in args.methods.split(","):
        for iterative in (False, True):
            for comp in (False, True):
                if method == "merge" and comp:
                    continue
                m = copy.deepcopy(model)
                with meter.window("prune") as pw:
                    r = prune(m, args.remove, method, iterative=iterative, compensation_on=comp,
                              calibration=calib, dev=dev, mask_steps=40)
                with meter.window("eval") as ew:
                    ppl = perplexity(m, held)
                row = {"method": method, "iterative": iterative, "compensation": comp, "removed": r.removed,
                       "merged": r.merged, "alphas": r.alphas, "val_ppl": ppl, "prune_s": pw.measurement.time_s,
                       "prune_j": pw.measurement.energy_j, "eval_j": ew.measurement.energy_j}
                rows.append(row)
                alpha = ",".join(f"{a:.2f}" for a in r.alphas) or "-"
                removed = "+".join(f"{a}{b}" for a, b in r.merged) if r.merged else ",".join(map(str, r.removed))
                print(f"{method:<17}{'iter' if iterative else 'one-shot':<10}{'yes' if comp else 'no':<6}{removed:<10}"
                      f"{alpha:<14}{ppl:>9.2f}{pw.measurement.time_s:>9.1f}{pw.measurement.energy_j:>9.1f}"
                      f"{ew.measurement.energy_j:>8.1f}", flush=True)
    if args.healing_steps:
        heal_data = batches(data["train"][-16 * args.healing_steps:], 16)  # fresh chunks, not the calibration set
        print(f"\nhealing: block_influence, iterative + compensation, then {args.healing_steps} KD steps "
              f"(lambda 0.5, T 2, entropy-weighted, lr 3e-4) on {heal_data.n_samples} further training chunks")
        m = copy.deepcopy(model)
        prune(m, args.remove, "block_influence", iterative=True, compensation_on=True, calibration=calib)
        ppl_before = perplexity(m, held)
        with meter.window("heal") as hw:
            h = heal(m, model, heal_data, args.healing_steps, "causal_lm", entropy_weighted=True, lr=3e-4, held_out=dev)
        healed = perplexity(m, held)
        print(f"  validation perplexity before healing {ppl_before:.2f}")
        print(f"  KD loss {h['kd_loss_before']:.3f} -> {h['kd_loss_after']:.3f}; validation perplexity {healed:.2f}; "
              f"{hw.measurement.time_s:.1f} s, {hw.measurement.energy_j:.1f} J modelled")
        # Like with like: healing is extra training, and this base model is under-trained, so the
        # unpruned model gets the same extra steps on the same chunks (plain next-token loss, same lr).
        u = copy.deepcopy(model)
        with meter.window("extra") as xw:
            extra_training(u, heal_data, args.healing_steps, lr=3e-4)
        same = perplexity(u, held)
        print(f"  unpruned + the same {args.healing_steps} steps on the same chunks: validation perplexity {same:.2f}; "
              f"{xw.measurement.time_s:.1f} s, {xw.measurement.energy_j:.1f} J modelled")
        print(f"  => healed pruned vs unpruned at equal extra training: {healed:.2f} vs {same:.2f} "
              f"({100 * (healed / same - 1):+.1f} % perplexity), for {100 * (1 - args.remove / 8):.0f} % of the blocks")
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"pruning_lm_results_rm{args.remove}.json").write_text(json.dumps({"baseline_ppl": base, "rows": rows}, indent=1))
    print(f"\nenergy figures are modelled (CpuModelMeter: 4 W per busy core-second + 0.375 W/GB RSS); "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
