"""Layer-pruning methods on the MiniLM BBC News classifier: macro-F1 after a short fine-tune.

    python benchmarks/pruning_classifier.py      # ~14 min on 2 shared cores; each variant's result is cached,
                                                 # so a re-run only prints (delete the cache file to re-measure)

For each method, 2 of MiniLM's 6 blocks (33 %; 25 % of 6 is 1.5) are removed from the
pre-trained encoder (fresh 5-way head), chosen on 32 labelled training articles (the
task-metric method scores a nearest-centroid probe's macro-F1 on 64 validation articles;
see docs/pruning.md for why a probe), then the model is fine-tuned briefly
(320 training articles, 2 epochs, batch 16, lr 1e-4, first 64 tokens) and scored on 400 test
articles. Compensation does not apply (MiniLM is post-norm) and merge needs a LLaMA-family
block, so neither appears. top/bottom are the same one-shot or iterative, so they run once.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenknobs.meters.cpu_model import CpuModelMeter
from greenknobs.ml import hf, metrics
from greenknobs.ml.pruning import build_calibration, prune
from pipelines.text_data import encode_labels, load_bbc_news

CACHE = Path(__file__).resolve().parent / ".cache"
MAX_LEN, TRAIN_N, TEST_N, EPOCHS, BATCH, LR = 64, 320, 400, 2, 16, 1e-4
VARIANTS = [("none", False), ("top", False), ("bottom", False)] + [
    (m, it) for m in ("block_influence", "angular", "iterative_loss", "iterative_metric", "learned_mask") for it in (False, True)]


def data():
    path = CACHE / "bbc_cls_tokens.json"
    if path.is_file():
        return json.loads(path.read_text())
    examples = load_bbc_news()
    labels = encode_labels(examples)
    splits = metrics.stratified_split(examples, (0.7, 0.1, 0.2), seed=0)
    tok = hf.load_tokenizer(hf.bundled_minilm_dir())
    out = {"labels": labels, "pad_id": tok.pad_token_id or 0}
    for name, part in zip(("train", "validation", "test"), splits):
        enc = tok([e["text"] for e in part], truncation=True, max_length=MAX_LEN)["input_ids"]
        out[name] = [{"input_ids": ids, "label": e["label"]} for ids, e in zip(enc, part)]
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def pad(rows, pad_id):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return ids, mask, torch.tensor([r["label"] for r in rows])


def finetune_and_score(model, d):
    rng = random.Random(0)
    train = rng.sample(d["train"], TRAIN_N)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    torch.manual_seed(0)
    for _ in range(EPOCHS):
        rng.shuffle(train)
        for s in range(0, len(train), BATCH):
            ids, mask, y = pad(train[s : s + BATCH], d["pad_id"])
            loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    test = d["test"][:TEST_N]
    pred = []
    with torch.no_grad():
        for s in range(0, len(test), 50):
            ids, mask, _ = pad(test[s : s + 50], d["pad_id"])
            pred += model(input_ids=ids, attention_mask=mask).logits.argmax(-1).tolist()
    truth = [r["label"] for r in test]
    return metrics.macro_f1(truth, pred), metrics.accuracy(truth, pred)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--remove", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="1 keeps CPU-seconds (hence modelled energy) stable on a shared box")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    d = data()
    calib = build_calibration(d["train"], d["pad_id"], 32, max_len=MAX_LEN, seed=0)
    dev = build_calibration(d["validation"], d["pad_id"], 64, max_len=MAX_LEN, seed=0)
    cache_path = CACHE / "pruning_classifier_results.json"
    key_cfg = f"rm{args.remove}-len{MAX_LEN}-n{TRAIN_N}-e{EPOCHS}-lr{LR}-t{TEST_N}"
    cached = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    meter = CpuModelMeter()
    base = hf.load_sequence_classifier(hf.bundled_minilm_dir(), len(d["labels"]))
    print(f"MiniLM-L6 BBC News, remove {args.remove} of 6 blocks; fine-tune {TRAIN_N} articles x {EPOCHS} epochs, "
          f"first {MAX_LEN} tokens; test {TEST_N} articles; calibration {calib.n_samples} train articles, dev {dev.n_samples}")
    header = f"{'method':<17}{'mode':<10}{'removed':<9}{'macro-F1':>9}{'acc':>7}{'prune s':>9}{'prune J':>9}{'tune s':>8}{'tune J':>8}"
    print(header + "\n" + "-" * len(header))
    for method, iterative in VARIANTS:
        key = f"{key_cfg}/{method}/{iterative}"
        if key not in cached:
            torch.manual_seed(0)
            model = copy.deepcopy(base)
            with meter.window("prune") as pw:
                removed = [] if method == "none" else prune(model, args.remove, method, iterative=iterative,
                                                            calibration=calib, dev=dev, mask_steps=30).removed
            with meter.window("tune") as tw:
                f1, acc = finetune_and_score(model, d)
            cached[key] = {"removed": removed, "f1": f1, "acc": acc, "prune_s": pw.measurement.time_s,
                           "prune_j": pw.measurement.energy_j, "tune_s": tw.measurement.time_s, "tune_j": tw.measurement.energy_j}
            CACHE.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(cached, indent=1))
        r = cached[key]
        mode = "-" if method in ("none", "top", "bottom") else ("iter" if iterative else "one-shot")
        print(f"{method:<17}{mode:<10}{','.join(map(str, r['removed'])) or '-':<9}{r['f1']:>9.3f}{r['acc']:>7.3f}"
              f"{r['prune_s']:>9.1f}{r['prune_j']:>9.1f}{r['tune_s']:>8.1f}{r['tune_j']:>8.1f}", flush=True)
    print(f"\nenergy figures are modelled (CpuModelMeter); total {time.perf_counter() - t0:.0f} s "
          f"(cached variants are not re-run: delete {cache_path} to re-measure)")


if __name__ == "__main__":
    main()
