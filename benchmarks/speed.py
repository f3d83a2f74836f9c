"""Speed and memory of LLMMTL against SASRec, measured side by side on this machine.

    python benchmarks/speed.py --dataset amazon

Writes benchmarks/results/speed.md (+ speed.json). Run it with nothing else running:
every figure is a ratio of two measurements taken in this one run.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def train_run(model, dataset, overrides, workdir):
    """One training run in its own process (peak RSS is its own); returns the result dict."""
    spec = os.path.join(workdir, f"{model}-{len(os.listdir(workdir))}.json")
    result = spec + ".result.json"
    with open(spec, "w") as f:  # a fresh checkpoint folder: every timed run starts from scratch
        json.dump({"model": model, "dataset": dataset, "result": result, "checkpoint_dir": spec[:-5] + "-ckpt",
                   "overrides": {"show_progress": False, **overrides}}, f)
    subprocess.run([sys.executable, "-m", "recbole_llm_mtl.benchmark", "--worker", spec], check=True, cwd=ROOT)
    with open(result) as f:
        return json.load(f)


def seconds_to_reach(history, target):
    """Seconds from process start until the valid score first reaches ``target``."""
    for epoch, score, secs in history:
        if score >= target:
            return secs
    return None


def matmul_flops(n=2048, repeats=10, dtype=torch.float32):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t)


def encoder_flops(lm, lengths):
    """Multiply-add FLOPs of a BERT-style encoder over real tokens (no padding):
    4h^2 (attention projections) + 2h*ffn per token per layer, plus 2*n^2*h for QK^T and AV."""
    cfg = lm.load().config
    h, ffn, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_token = 2 * (4 * h * h + 2 * h * ffn)
    return layers * sum(n * per_token + 2 * 2 * n * n * h for n in lengths)


def plain_hf_loop(model, tok, texts, max_length, batch_size=64):
    """The usual loop: file order, fixed batches, padding to the batch's longest text, mean pooling."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state.float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append((hidden * m).sum(1) / m.sum(1))
    return torch.cat(out)


def encoding_bench(config, dataset):
    from transformers import AutoModel

    from recbole_llm_mtl.text.encoder import DTYPES, SharedLanguageModel, resolve_dtype
    from recbole_llm_mtl.text.templates import render_texts, template_from_config

    texts, _ = render_texts(dataset, dataset.item_feat,
                            template_from_config(config["item_text_fields"], config["item_text_template"]),
                            config["text_separator"], "item")
    texts = texts[1:]
    # on the CPU, like the plain loops below, in the dtype the main command uses there
    dtype = resolve_dtype(config["llm_dtype"])
    lm = SharedLanguageModel(config["llm_path"], config["llm_pooling"], config["llm_max_length"], dtype)
    lm.encode(texts[:256], show_progress=False)  # warm-up
    lengths = [len(x) for x in lm.tokenize(texts)]
    t = time.perf_counter()
    ours = lm.encode(texts, config["llm_batch_tokens"], show_progress=False)
    ours_s = time.perf_counter() - t
    plain_s, plain = {}, {}
    for name in dict.fromkeys(["float32", dtype]):  # the usual float32 loop, and one in our dtype
        model = AutoModel.from_pretrained(lm.path, dtype=DTYPES[name]).eval()
        plain_hf_loop(model, lm.tokenizer, texts[:64], lm.max_length)  # warm-up
        t = time.perf_counter()
        plain[name] = plain_hf_loop(model, lm.tokenizer, texts, lm.max_length)
        plain_s[name] = time.perf_counter() - t
    min_cos = torch.nn.functional.cosine_similarity(ours, plain["float32"]).min().item()
    assert min_cos > 0.999, f"our encoding differs from the plain float32 loop (min cosine {min_cos})"
    flops = encoder_flops(lm, lengths)
    return {"texts": len(texts), "tokens": sum(lengths), "dtype": dtype, "ours_s": ours_s,
            "plain_s": plain_s["float32"], "plain_same_dtype_s": plain_s[dtype], "min_cosine_vs_float32": min_cos,
            "ours_tokens_per_s": sum(lengths) / ours_s, "ours_gflops": flops / ours_s / 1e9,
            "matmul_gflops": matmul_flops() / 1e9, "matmul_dtype_gflops": matmul_flops(dtype=DTYPES[dtype]) / 1e9}


def serving_bench(test_llm, test_sas, model_llm, model_sas):
    def users_per_s(model, loader):
        model.eval()
        n, t = 0, time.perf_counter()
        with torch.no_grad():
            for batch in loader:
                model.full_sort_predict(batch[0])
                n += len(batch[0])
        return n / (time.perf_counter() - t)

    llm_ups, sas_ups = users_per_s(model_llm, test_llm), users_per_s(model_sas, test_sas)
    one = next(iter(test_llm))[0][[0]]
    with torch.no_grad():
        model_llm.full_sort_predict(one)
        times = []
        for _ in range(50):
            t = time.perf_counter()
            torch.topk(model_llm.full_sort_predict(one), 10)
            times.append(time.perf_counter() - t)
    times.sort()
    return {"llmmtl_users_per_s": llm_ups, "sasrec_users_per_s": sas_ups,
            "top10_one_user_ms_median": 1000 * times[len(times) // 2],
            "top10_one_user_ms_p95": 1000 * times[int(len(times) * 0.95)]}


def build_model(name, dataset, overrides):
    from recbole_llm_mtl.build import build
    from recbole_llm_mtl.config import build_config

    config = build_config(name, dataset, config_dict={"show_progress": False, **overrides})
    built = build(config)  # as run() builds it: train-only facts come from train
    # only LLMMTL times its own construction
    return config, built.dataset, built.test, built.model, getattr(built.model, "init_seconds", None)


def user_text_bench(model):
    """Cost of the user texts: every distinct training-position text encoded once, cold
    (the content-keyed cache makes later runs free); valid/test add one text per user."""
    texts_of = model.user_texts
    if texts_of is None:
        return None
    lm = texts_of.encoder.lm
    texts = [texts_of.text(k) for k in texts_of.rows]
    tokens = sum(map(len, lm.tokenize(texts, texts_of.max_length)))
    start = time.perf_counter()
    lm.encode(texts, show_progress=False, max_length=texts_of.max_length)
    seconds = time.perf_counter() - start
    return {"texts": len(texts), "tokens": tokens, "seconds": seconds, "max_length": texts_of.max_length,
            "history_items": texts_of.k, "recent_titles": texts_of.recent_titles, "tokens_per_s": tokens / seconds}


def machine_line():
    """CPU model, cores, threads and whether the CPU multiplies bfloat16 natively: that
    decides ``llm_dtype: auto`` and with it most of the encoding figures."""
    from recbole_llm_mtl.provenance import machine
    from recbole_llm_mtl.text.encoder import NATIVE_BF16_CPU_FLAGS, cpu_has_native_bf16

    bf16 = "yes" if cpu_has_native_bf16() else f"no ({'/'.join(NATIVE_BF16_CPU_FLAGS)} absent)"
    host = machine()
    return (f"{host['cpu']} ({platform.machine()}), {host['cores']} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, native bfloat16: {bf16}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="amazon")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--data_path", default=None, help="data_path override (a smoke test on a small slice)")
    parser.add_argument("--report_only", action="store_true",
                        help="re-write speed.md from the measurements in <out>/speed.json; measures nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        with open(os.path.join(args.out, "speed.json")) as f:
            return write_report(json.load(f), args, write_json=False)
    base = {"data_path": args.data_path} if args.data_path else {}
    work = tempfile.mkdtemp(prefix="speed-")
    cold_cache = os.path.join(work, "cold_cache")
    warm_cache = os.path.join(work, "warm_cache")
    res = {"machine": machine_line()}

    # 1. time to quality (and 5. peak memory of the main job)
    print("SASRec ...", flush=True)
    sas = train_run("SASRec", args.dataset, dict(base), work)
    sas_best = max(s for _, s, _ in sas["history"])
    sas_time = seconds_to_reach(sas["history"], sas_best)
    print("LLMMTL, cold cache ...", flush=True)
    cold = train_run("LLMMTL", args.dataset, {**base, "text_cache_dir": cold_cache}, work)
    shutil.copytree(cold_cache, warm_cache)
    print("LLMMTL, warm cache ...", flush=True)
    warm = train_run("LLMMTL", args.dataset, {**base, "text_cache_dir": warm_cache}, work)
    res["time_to_quality"] = {
        "sasrec_best_valid_ndcg10": sas_best, "sasrec_seconds": sas_time,
        "llmmtl_warm_seconds": seconds_to_reach(warm["history"], sas_best),
        "llmmtl_cold_seconds": seconds_to_reach(cold["history"], sas_best),
        "llmmtl_best_valid_ndcg10": max(s for _, s, _ in warm["history"]),
        "sasrec_test": sas["test_result"], "llmmtl_test": warm["test_result"]}
    res["memory"] = {"llmmtl_cold_peak_rss_mb": cold["peak_rss_mb"], "llmmtl_warm_peak_rss_mb": warm["peak_rss_mb"],
                     "sasrec_peak_rss_mb": sas["peak_rss_mb"]}

    # 3. warm start: text vectors from the cache
    print("warm start, encoding and serving ...", flush=True)
    config_llm, data_llm, test_llm, model_llm, init_s = build_model("LLMMTL", args.dataset, {**base, "text_cache_dir": warm_cache})
    res["warm_start"] = {"text_vector_seconds": model_llm.text_seconds, "model_init_seconds": init_s}
    # 2. text encoding (item texts; user texts at every training position)
    res["encoding"] = encoding_bench(config_llm, data_llm)
    res["user_text"] = user_text_bench(model_llm)
    # 4. serving
    _, _, test_sas, model_sas, _ = build_model("SASRec", args.dataset, dict(base))
    res["serving"] = serving_bench(test_llm, test_sas, model_llm, model_sas)
    shutil.rmtree(work, ignore_errors=True)
    write_report(res, args)


def write_report(res, args, write_json=True):
    ttq, enc, srv, mem = res["time_to_quality"], res["encoding"], res["serving"], res["memory"]

    def row(name, measured, ratio, target, ok):
        return f"| {name} | {measured} | {ratio} | {target} | {'pass' if ok else 'FAIL'} |"

    warm_ratio = ttq["llmmtl_warm_seconds"] / ttq["sasrec_seconds"] if ttq["llmmtl_warm_seconds"] else None
    cold_ratio = ttq["llmmtl_cold_seconds"] / ttq["sasrec_seconds"] if ttq["llmmtl_cold_seconds"] else None
    enc_ratio = enc["ours_gflops"] / enc["matmul_gflops"]
    loop_ratio = enc["plain_s"] / enc["ours_s"]
    srv_ratio = srv["llmmtl_users_per_s"] / srv["sasrec_users_per_s"]
    lines = [
        f"# Speed and memory on `{args.dataset}`", "",
        f"Machine: {res['machine']}. Command: `python benchmarks/speed.py --dataset {args.dataset}`", "",
        "| target | measured | ratio | goal | result |", "|---|---|---|---|---|",
        row("1. time to SASRec's best valid NDCG@10 (warm cache)",
            f"LLMMTL {ttq['llmmtl_warm_seconds'] or float('nan'):.0f}s vs SASRec {ttq['sasrec_seconds']:.0f}s",
            f"{warm_ratio:.2f}x" if warm_ratio else "never reached", "<= 0.5x", warm_ratio is not None and warm_ratio <= 0.5),
        row("1b. same, cold cache (encoding included)",
            f"LLMMTL {ttq['llmmtl_cold_seconds'] or float('nan'):.0f}s", f"{cold_ratio:.2f}x" if cold_ratio else "-",
            "reported", True),
        row("2a. text encoding FLOP/s vs fp32 matmul FLOP/s",
            f"{enc['ours_gflops']:.1f} vs {enc['matmul_gflops']:.1f} GFLOP/s ({enc['ours_tokens_per_s']:.0f} tokens/s)",
            f"{enc_ratio:.2f}", ">= 0.70", enc_ratio >= 0.7),
        row("2b. encoding speed-up over a plain HF loop (float32, file order, batches of 64)",
            f"{enc['ours_s']:.1f}s vs {enc['plain_s']:.1f}s", f"{loop_ratio:.2f}x", ">= 1.5x", loop_ratio >= 1.5),
        row("3. warm start: time on text vectors", f"{res['warm_start']['text_vector_seconds']:.2f}s", "-", "<= 2 s",
            res["warm_start"]["text_vector_seconds"] <= 2),
        row("4a. full-sort evaluation throughput", f"{srv['llmmtl_users_per_s']:.0f} vs {srv['sasrec_users_per_s']:.0f} users/s",
            f"{srv_ratio:.2f}x", ">= 0.5x", srv_ratio >= 0.5),
        row("4b. top-10 for one user", f"{srv['top10_one_user_ms_median']:.1f} ms median, {srv['top10_one_user_ms_p95']:.1f} ms p95",
            "-", "< 50 ms", srv["top10_one_user_ms_p95"] < 50),
        row("5. peak RSS of the main command", f"{mem['llmmtl_cold_peak_rss_mb']:.0f} MB (cold), {mem['llmmtl_warm_peak_rss_mb']:.0f} MB (warm)",
            "-", "<= 4096 MB", max(mem["llmmtl_cold_peak_rss_mb"], mem["llmmtl_warm_peak_rss_mb"]) <= 4096),
        "",
        f"SASRec best valid NDCG@10 {ttq['sasrec_best_valid_ndcg10']:.4f}; LLMMTL best valid NDCG@10 "
        f"{ttq['llmmtl_best_valid_ndcg10']:.4f}. Test NDCG@10: SASRec {ttq['sasrec_test']['ndcg@10']:.4f}, "
        f"LLMMTL {ttq['llmmtl_test']['ndcg@10']:.4f}. Times count from process start (data loading included).",
        f"Encoding: {enc['texts']} item texts, {enc['tokens']} real tokens, our pass in {enc['dtype']} "
        f"(`llm_dtype: auto` on this machine; min cosine to the float32 loop's vectors {enc['min_cosine_vs_float32']:.5f}). "
        + (f"For transparency: the plain loop run in {enc['dtype']} too took {enc['plain_same_dtype_s']:.1f}s "
           f"({enc['plain_same_dtype_s'] / enc['ours_s']:.2f}x ours), and a large {enc['dtype']} matmul reaches "
           f"{enc['matmul_dtype_gflops']:.1f} GFLOP/s ({enc['ours_gflops'] / enc['matmul_dtype_gflops']:.2f} of it). "
           if enc["dtype"] != "float32" else "")
        + "Full-sort scoring runs per evaluation batch of users (eval_batch_size), so no full user x item "
        "matrix is ever built."]
    if enc["dtype"] == "float32":
        # both passes in float32: the matmul peak bounds what any schedule of the same FLOPs can gain
        plain_share = enc["ours_gflops"] * enc["ours_s"] / enc["plain_s"] / enc["matmul_gflops"]
        lines += ["", f"Both passes run in float32 here, so 2b compares schedules of the same FLOPs: ours reaches "
                  f"{enc_ratio:.2f} of the float32 matmul peak as measured, the plain loop {plain_share:.2f}, so a "
                  f"schedule could be about {1 / plain_share:.2f}x faster than the loop at most. On a CPU that "
                  "multiplies bfloat16 natively, `llm_dtype: auto` encodes in bfloat16, where most of a larger gain comes from."]
    ut = res.get("user_text")
    if ut:
        read = (f"profile fields, reviews of the last {ut['history_items']} items"
                + (" and their titles, newest first" if ut.get("recent_titles") else ""))
        lines += ["", f"User text: {ut['texts']} distinct texts for the training positions ({read}, where the dataset "
                  f"has them; at most {ut['max_length']} tokens), {ut['tokens']} real tokens, encoded cold in "
                  f"{ut['seconds']:.1f}s ({ut['tokens_per_s']:.0f} tokens/s, length-sorted batches). The vectors are "
                  "cached by content, so warm runs pay nothing; validation and test add one text per user (the "
                  "last position), encoded when first scored."]
    lines.append("")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "speed.md"), "w") as f:
        f.write("\n".join(lines))
    if write_json:
        with open(os.path.join(args.out, "speed.json"), "w") as f:
            json.dump(res, f, indent=1, default=str)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
