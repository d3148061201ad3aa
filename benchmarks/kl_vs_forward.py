"""The KL check's cost against its floor: plain forward passes of both models over the same tokens.

Every measurement runs in a fresh process, so its peak memory (max RSS, both models' weights included)
is its own. Modes:

- ``floor``:   base and candidate forward passes, micro-batched, logits discarded. A forward pass
  computes the logits at every position, prompt included;
- ``kl``:      forgetguard's ``teacher_forced_kl`` (forward and reverse KL and both top-1 ids at every
  response position; the LM head runs at response positions only);
- ``naive``:   full [B, T, V] logits of both models, ``log_softmax`` and ``F.kl_div`` per micro-batch
  (the code one writes by hand), summed over response positions;
- ``sample``:  base sampling as ``Forgetguard.kl`` does it (``sample_responses``, seeded, batch 16),
  timed once; the sampled responses are the token set of the "sampled" floor and KL rows;
- ``load``:    the base alone, loaded: what one model's weights cost in RSS.

With ``--peft ADAPTER`` (the ``peft`` suite) the candidate is a PEFT adapter on the base: one copy of
the weights, the base pass runs with the adapter disabled, and the floor is those same two passes.

Token set: windows of ``--tokens`` tokens of Python's own documentation (``pydoc_data.topics`` in
sorted topic order, about 113,000 SmolLM2 tokens; windows overlap when more are asked for than the
text holds), the first ``--prompt-tokens`` of each the prompt, the rest the response.

Every ratio compares measurements of the same round. The machine may be shared: each measurement
records how much CPU other processes used meanwhile ("others' CPU"), and a round where that exceeds
``--max-others`` cores is run again (at most ``--retries`` times per suite).

Usage::

    python benchmarks/kl_vs_forward.py --base BASE --candidate CAND --peft ADAPTER --suite all
    python benchmarks/kl_vs_forward.py --base BASE --candidate CAND --suite main --repeats 3

Suites: ``main`` (floor, kl, naive; floor and kl on base-sampled responses), ``peft``, ``scaling``
(floor and kl at 64, 256, 512 prompts, one round), ``batch`` (micro-batch 1, 4, 8, 16), ``split``
(prompt and response of 128 tokens each), ``all``. Prints one JSON line per measurement, then
Markdown tables: median and range over rounds. No assertions: the numbers are the output.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

Seq = tuple[list[int], list[int]]


def text_windows(tokenizer: Any, n: int, tokens: int, prompt_tokens: int) -> list[Seq]:
    """``n`` distinct windows of ``tokens`` tokens, split into (prompt, response)."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    ids = tokenizer("\n\n".join(topics[k] for k in sorted(topics)))["input_ids"]
    if len(ids) < tokens:
        raise SystemExit(f"the text has {len(ids)} tokens, fewer than one window of {tokens}")
    stride = min(tokens, (len(ids) - tokens) // max(n - 1, 1))
    return [
        (ids[i * stride : i * stride + prompt_tokens], ids[i * stride + prompt_tokens : i * stride + tokens])
        for i in range(n)
    ]


def load_pair(base: str, candidate: str) -> tuple[Any, Any]:
    from pytest_forgetguard.models import ModelStore

    store = ModelStore(device="cpu", dtype="float32")
    b = store.get(base, role="base")
    c = store.get(candidate, base=b)
    b.load()
    c.load()
    return b, c


def batches(seqs: list[Seq], batch: int):
    """Right-padded micro-batches of prompt + response[:-1] (the last token is only predicted)."""
    import torch

    # Sorted by length, as forgetguard does: the least padding, so the floor is not slowed by it.
    seqs = sorted(seqs, key=lambda pr: len(pr[0]) + len(pr[1]))
    for s in range(0, len(seqs), batch):
        part = seqs[s : s + batch]
        inputs = [p + r[:-1] for p, r in part]
        width = max(len(x) for x in inputs)
        ids = torch.zeros((len(part), width), dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for i, x in enumerate(inputs):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        yield part, ids, mask


def run_floor(b: Any, c: Any, seqs: list[Seq], batch: int) -> float:
    for _, ids, mask in batches(seqs, batch):
        for handle in (b, c):
            with handle.active() as model:
                model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # noqa: B018 (discarded)
    return 0.0


def run_kl(b: Any, c: Any, seqs: list[Seq], batch: int) -> float:
    from pytest_forgetguard.kl import TokenSequence, teacher_forced_kl

    ts = [TokenSequence(i, p, r) for i, (p, r) in enumerate(seqs)]
    return teacher_forced_kl(b, c, ts, batch_size=batch).value


def run_naive(b: Any, c: Any, seqs: list[Seq], batch: int) -> float:
    import torch

    total, count = 0.0, 0
    for part, ids, mask in batches(seqs, batch):
        with b.active() as model:
            lb = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().log_softmax(-1)
        with c.active() as model:
            lc = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().log_softmax(-1)
        kl = torch.nn.functional.kl_div(lc, lb, log_target=True, reduction="none").sum(-1)
        for i, (p, r) in enumerate(part):
            total += float(kl[i, len(p) - 1 : len(p) - 1 + len(r)].sum())
            count += len(r)
    return total / count


def run_sample(b: Any, prompts: list[list[int]], max_new_tokens: int, out: Path) -> float:
    from pytest_forgetguard.generation import sample_responses

    # Forgetguard.kl samples with batch_size=max(batch_size, 16) and its seed (1234 by default).
    responses = sample_responses(b, prompts, max_new_tokens, seed=1234, batch_size=16)
    out.write_text(json.dumps([[p, r] for p, r in zip(prompts, responses)]))
    return float(sum(len(r) for r in responses))


def busy_seconds() -> float | None:
    """CPU seconds all processes on this machine have used so far (Linux), to see who else ran."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    if args.child == "load":  # the base alone: what one model's weights cost
        from pytest_forgetguard.models import ModelStore

        ModelStore(device="cpu", dtype="float32").get(args.base, role="base").load()
        rss = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return {"mode": "load", "wall_s": 0.0, "peak_rss_mib": rss, "loaded_rss_mib": rss, "others_cores": None}
    cand = args.peft or args.candidate
    b, c = load_pair(args.base, cand)
    if args.token_file:
        seqs = [(p, r) for p, r in json.loads(Path(args.token_file).read_text())]
    else:
        seqs = text_windows(b.tokenizer, args.prompts, args.tokens, args.prompt_tokens)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    busy0, own0 = busy_seconds(), own_seconds()
    start = time.perf_counter()
    with torch.no_grad():
        if args.child == "floor":
            value = run_floor(b, c, seqs, args.batch)
        elif args.child == "kl":
            value = run_kl(b, c, seqs, args.batch)
        elif args.child == "naive":
            value = run_naive(b, c, seqs, args.batch)
        else:
            value = run_sample(b, [p for p, _ in seqs], args.tokens - args.prompt_tokens, Path(args.sample_out))
    wall = time.perf_counter() - start
    busy1, own1 = busy_seconds(), own_seconds()
    # Cores' worth of CPU that other processes used meanwhile: above ~0.1 the timing is disturbed.
    others = None if busy0 is None or busy1 is None else round(max(0.0, busy1 - busy0 - (own1 - own0)) / wall, 2)
    return {
        "mode": args.child,
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "loaded_rss_mib": round(loaded),
        "value": value,
        "positions": sum(len(p) + len(r) - 1 for p, r in seqs),
        "response_tokens": sum(len(r) for _, r in seqs),
        "others_cores": others,
    }


def measure(args: argparse.Namespace, mode: str, **over: Any) -> dict[str, Any]:
    """Run one mode in a fresh process; ``over`` overrides prompts/batch/prompt_tokens/peft/token_file."""
    opts = {
        "prompts": args.prompts,
        "tokens": args.tokens,
        "prompt_tokens": args.prompt_tokens,
        "batch": args.batch,
        "peft": None,
        "token_file": None,
        "sample_out": None,
    } | over
    cmd = [sys.executable, __file__, "--base", args.base, "--candidate", args.candidate, "--child", mode]
    for key, value in opts.items():
        if value is not None:
            cmd += ["--" + key.replace("_", "-"), str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update({k: v for k, v in opts.items() if k in ("prompts", "batch", "prompt_tokens")})
    result["peft"] = bool(opts["peft"])
    result["sampled"] = bool(opts["token_file"])
    print(json.dumps(result), flush=True)
    return result


def wait_until_idle(limit_s: float) -> None:
    """Wait (up to ``limit_s``) until other processes use under 0.1 cores over 5 s."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = busy_seconds()
        time.sleep(5)
        after = busy_seconds()
        if before is None or after is None or (after - before) / 5 < 0.1:
            return


Spec = tuple[str, str, dict[str, Any]]  # (row key, mode, overrides)


def run_rounds(args: argparse.Namespace, specs: list[Spec], repeats: int) -> tuple[list[dict[str, Any]], int]:
    """``repeats`` rounds of ``specs``; a round that other processes disturbed is run again (``--retries``)."""
    rounds: list[dict[str, Any]] = []
    discarded = 0
    while len(rounds) < repeats:
        wait_until_idle(args.wait)
        r = {key: measure(args, mode, **over) for key, mode, over in specs}
        disturbed = [k for k, v in r.items() if (v["others_cores"] or 0.0) > args.max_others]
        if disturbed and discarded < args.retries:
            discarded += 1
            print(f"round disturbed by other processes ({', '.join(disturbed)}): run again", flush=True)
            continue
        rounds.append(r)
    return rounds, discarded


def spread(values: list[float], digits: int = 2) -> str:
    """Median, and the range when there is more than one value."""
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def table(title: str, rounds: list[dict[str, Any]], discarded: int, rows: list[tuple[str, str, str]]) -> str:
    """Markdown: per row (key, label, floor key) wall and peak RSS, and their ratios to the same round's floor."""
    n = len(rounds)
    head = f"**{title}** ({n} round{'s' if n > 1 else ''}: median (min–max)"
    head += f"; {discarded} disturbed round{'s' if discarded != 1 else ''} run again)" if discarded else ")"
    lines = [
        head,
        "",
        "| mode | wall (s) | × floor | peak RSS (MiB) | × floor | others' CPU (cores) |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, floor in rows:
        walls = [r[key]["wall_s"] for r in rounds]
        peaks = [r[key]["peak_rss_mib"] for r in rounds]
        ratio_w = [r[key]["wall_s"] / r[floor]["wall_s"] for r in rounds]
        ratio_m = [r[key]["peak_rss_mib"] / r[floor]["peak_rss_mib"] for r in rounds]
        others = max((r[key]["others_cores"] or 0.0) for r in rounds)
        lines.append(
            f"| {label} | {spread(walls, 1)} | {spread(ratio_w)} | {spread(peaks, 0)} | {spread(ratio_m)} | "
            f"≤ {others:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--candidate", required=True, help="a full model (fine-tuned copy of the base)")
    ap.add_argument("--peft", help="a PEFT adapter on --base, for the 'peft' suite")
    ap.add_argument("--suite", default="main", help="main, peft, scaling, batch, split or all (comma-separated)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256, help="tokens per sequence, prompt included")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--scaling", default="64,256,512", help="prompt counts of the scaling suite")
    ap.add_argument("--batches", default="1,4,8,16", help="micro-batch sizes of the batch suite")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every suite but scaling (1 round)")
    ap.add_argument("--no-sample", action="store_true", help="main suite: skip base sampling")
    ap.add_argument(
        "--max-others",
        type=float,
        default=0.15,
        help="a round where other processes used more CPU than this (cores) during a measurement is run again",
    )
    ap.add_argument("--retries", type=int, default=3, help="disturbed rounds run again, at most, per suite")
    ap.add_argument("--wait", type=float, default=300, help="seconds to wait for an idle machine before a round")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--token-file", help=argparse.SUPPRESS)
    ap.add_argument("--sample-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    import torch

    suites = args.suite.split(",")
    if "all" in suites:
        suites = ["main", "peft", "scaling", "batch", "split"]
    out: list[str] = [
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"{args.prompts} prompts x {args.tokens} tokens ({args.prompt_tokens} prompt + "
        f"{args.tokens - args.prompt_tokens} response), batch {args.batch}, candidate {args.candidate}"
    ]
    tmp = Path(tempfile.gettempdir()) / f"fg-bench-{os.getpid()}.json"

    if "main" in suites:
        specs: list[Spec] = [("floor", "floor", {}), ("kl", "kl", {}), ("naive", "naive", {})]
        rows = [
            ("floor", "floor: base + candidate forward, logits discarded", "floor"),
            ("kl", "forgetguard KL, teacher-forced on dataset responses", "floor"),
            ("naive", "naive: full [B, T, V] logits + `F.kl_div`", "floor"),
        ]
        if not args.no_sample:
            sampled = measure(args, "sample", sample_out=str(tmp))
            specs += [
                ("floor@sampled", "floor", {"token_file": str(tmp)}),
                ("kl@sampled", "kl", {"token_file": str(tmp)}),
            ]
            rows += [
                ("floor@sampled", "floor on base-sampled responses", "floor@sampled"),
                ("kl@sampled", "forgetguard KL on base-sampled responses", "floor@sampled"),
            ]
        rounds, discarded = run_rounds(args, specs, args.repeats)
        out.append(table("KL check vs floor", rounds, discarded, rows))
        if not args.no_sample:
            out.append(
                f"Base sampling itself ({int(sampled['value'])} tokens for {args.prompts} prompts, batch 16): "
                f"{sampled['wall_s']:.1f} s. Token-by-token decoding, not a forward pass, so it has no floor "
                "here; forgetguard caches the samples by model fingerprint, so a rerun with an unchanged base "
                "skips it."
            )
        values = {k: statistics.median(r[k]["value"] for r in rounds) for k in ("kl", "naive")}
        out.append(f"KL value: forgetguard {values['kl']:.9g}, naive {values['naive']:.9g} nats/token.")

    if "peft" in suites:
        if not args.peft:
            raise SystemExit("the peft suite needs --peft ADAPTER_DIR")
        specs = [
            ("base-only", "load", {}),
            ("floor", "floor", {"peft": args.peft}),
            ("kl", "kl", {"peft": args.peft}),
        ]
        rounds, discarded = run_rounds(args, specs, args.repeats)
        rows = [
            ("floor", "floor: base (adapter disabled) + adapter forward", "floor"),
            ("kl", "forgetguard KL, teacher-forced", "floor"),
        ]
        out.append(table(f"PEFT candidate {args.peft}", rounds, discarded, rows))
        one = statistics.median(r["base-only"]["loaded_rss_mib"] for r in rounds)
        both = statistics.median(r["kl"]["loaded_rss_mib"] for r in rounds)
        out.append(f"RSS after loading: the base alone {one:.0f} MiB, base + adapter {both:.0f} MiB.")

    if "scaling" in suites:
        specs, rows = [], []
        counts = [int(x) for x in args.scaling.split(",")]
        for n in counts:
            specs += [(f"floor@{n}", "floor", {"prompts": n}), (f"kl@{n}", "kl", {"prompts": n})]
            rows += [(f"floor@{n}", f"floor, {n} prompts", f"floor@{n}"), (f"kl@{n}", f"KL, {n} prompts", f"floor@{n}")]
        rounds, discarded = run_rounds(args, specs, 1)
        out.append(table(f"Scaling with the number of prompts (batch {args.batch})", rounds, discarded, rows))
        lo, hi = min(counts), max(counts)
        grow = rounds[0][f"kl@{hi}"]["peak_rss_mib"] / rounds[0][f"kl@{lo}"]["peak_rss_mib"]
        out.append(f"KL peak RSS, {hi} prompts / {lo} prompts: {grow:.3f}.")

    if "batch" in suites:
        specs, rows = [], []
        for bs in (int(x) for x in args.batches.split(",")):
            specs += [(f"floor@{bs}", "floor", {"batch": bs}), (f"kl@{bs}", "kl", {"batch": bs})]
            rows += [
                (f"floor@{bs}", f"floor, batch {bs}", f"floor@{bs}"),
                (f"kl@{bs}", f"KL, batch {bs}", f"floor@{bs}"),
            ]
        rounds, discarded = run_rounds(args, specs, args.repeats)
        out.append(table(f"Micro-batch size ({args.prompts} prompts)", rounds, discarded, rows))

    if "split" in suites:
        half = args.tokens // 2
        specs = [("floor", "floor", {"prompt_tokens": half}), ("kl", "kl", {"prompt_tokens": half})]
        rounds, discarded = run_rounds(args, specs, args.repeats)
        rows = [("floor", "floor", "floor"), ("kl", "forgetguard KL", "floor")]
        out.append(table(f"Prompt {half} + response {args.tokens - half} tokens", rounds, discarded, rows))
    tmp.unlink(missing_ok=True)
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
