"""The benchmark figures as PNG charts: reads docs/benchmarks/data/<bench>.json (written
by the benchmarks, bench/_results.py) and draws into docs/benchmarks/. Not a benchmark.

    just plots                  (after `just bench fanout`, `just bench chat`, ...)
"""

from __future__ import annotations

import json
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from bench._results import ROOT, results_dir  # noqa: E402

OUT = ROOT / "docs" / "benchmarks"


def load(bench: str) -> dict[str, Any] | None:
    path = results_dir() / f"{bench}.json"
    if not path.exists():
        print(f"{path}: missing (run `just bench {bench}`), its charts are skipped")
        return None
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def caption(document: dict[str, Any]) -> str:
    machine = document["machine"]
    return f"{document['date']}, {machine['cpus']} cores ({machine['cpu']})"


def cdf(ax: Axes, values: list[float], label: str) -> None:
    ordered = sorted(values)
    if not ordered:
        return
    shares = [(i + 1) / len(ordered) for i in range(len(ordered))]
    ax.step(ordered, shares, where="post", label=f"{label} (n={len(ordered):,})")


def percentile_marks(ax: Axes) -> None:
    for share, name in ((0.5, "p50"), (0.99, "p99")):
        ax.axhline(share, color="grey", linewidth=0.6, linestyle=":")
        ax.annotate(name, (1.0, share), xycoords=("axes fraction", "data"), fontsize=8)


def save(figure: Any, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"wrote {path.relative_to(ROOT)}")


def fanout(document: dict[str, Any]) -> None:
    runs = document["figures"]  # "gateway" and "floor" (bench/floor.py), the same run
    figure, (rate_ax, cpu_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in (
        (rate_ax, "deliveries_per_s", "deliveries per second (bursts of 200 frames)"),
        (cpu_ax, "cpu_us_per_delivery", "server CPU per delivery (µs)"),
    ):
        for label, figures in runs.items():
            steps = figures["bursts"]
            sockets = [s["sockets"] for s in steps]
            samples = [s[key] for s in steps]
            medians = [sorted(r)[len(r) // 2] for r in samples]
            low = [m - min(r) for m, r in zip(medians, samples, strict=True)]
            high = [max(r) - m for m, r in zip(medians, samples, strict=True)]
            ax.errorbar(sockets, medians, yerr=[low, high], marker="o", capsize=4, label=label)
        ax.set_xlabel("sockets of one patient, over 2 processes")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(f"Fan-out through Redis, median and range of runs — {caption(document)}")
    save(figure, "fanout-throughput.png")

    figure, ax = plt.subplots(figsize=(7, 4))
    for label, figures in runs.items():
        paced = figures["paced"]
        cdf(ax, paced["latencies_ms"], f"{label}, {paced['sockets']} sockets (every 10th sample)")
    percentile_marks(ax)
    ax.set_xscale("log")
    ax.set_xlabel("publish → received by the client (ms, log scale)")
    ax.set_ylabel("share of deliveries")
    ax.set_title(
        f"Fan-out latency, {paced['frames_per_s']:g} frames/s for {paced['seconds']:g} s"
        f" — {caption(document)}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(figure, "fanout-latency.png")


def chat(document: dict[str, Any]) -> None:
    figures = document["figures"]
    exchanges = figures.get("a")
    if not exchanges:
        return
    figure, (first_ax, relay_ax) = plt.subplots(1, 2, figsize=(10, 4))
    cdf(first_ax, exchanges["added_first_token_ms"], "added time to first token")
    first_ax.set_xlabel("chat.send received → first delta out, less the model's wait (ms)")
    first_ax.set_title(
        f"with {figures['own_memories']:,} of the patient's memories, "
        f"{figures['memories']:,} others'",
        fontsize=9,
    )
    cdf(relay_ax, exchanges["relay_same_process_ms"], "the sender's process")
    cdf(relay_ax, exchanges["relay_other_process_ms"], "the other process")
    relay_ax.set_xscale("log")
    relay_ax.set_xlabel("token from the model → delta at a device (ms, log scale)")
    relay_ax.set_title("relay overhead per delta", fontsize=9)
    for ax in (first_ax, relay_ax):
        percentile_marks(ax)
        ax.set_ylabel("share")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    figure.suptitle(f"Chat latency distributions — {caption(document)}")
    save(figure, "chat-latency.png")


def retrieval(document: dict[str, Any]) -> None:
    for dims, scenario in document["figures"].items():
        targets = scenario["targets"]
        figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
        for ax, kind in zip(axes, ("own", "random"), strict=True):
            cells = [c for c in scenario["cells"] if c["kind"] == kind]
            strategies = sorted({c["strategy"].split(" ")[0] for c in cells})
            for strategy in strategies:
                chosen = [c for c in cells if c["strategy"].split(" ")[0] == strategy]
                ax.scatter(
                    [c["p99_ms"] for c in chosen],
                    [c["recall"] for c in chosen],
                    label=strategy,
                    marker={"exact": "s", "gateway": "o", "graph": "^"}.get(strategy, "x"),
                )
                for c in chosen:
                    ax.annotate(f"{c['size']:,}", (c["p99_ms"], c["recall"]), fontsize=7, alpha=0.8)
            ax.axvline(targets["p99_ms"], color="grey", linestyle="--", linewidth=0.8)
            ax.axhline(targets["recall"], color="grey", linestyle="--", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("p99 latency (ms, log scale)")
            ax.set_title(f'"{kind}" queries', fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
        axes[0].set_ylabel("recall@10")
        figure.suptitle(
            f"Retrieval, {int(scenario['rows']):,} memories of {dims} dims: recall against "
            f"p99 per patient size (dashed: the targets) — {caption(document)}",
            fontsize=10,
        )
        save(figure, f"retrieval-{dims}.png")


def main() -> None:
    for bench, draw in (("fanout", fanout), ("chat", chat), ("retrieval", retrieval)):
        document = load(bench)
        if document is not None:
            draw(document)


if __name__ == "__main__":
    main()
