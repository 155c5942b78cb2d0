#!/usr/bin/env python3
"""Quality score of the digits demo, and its pictures.

A small MLP (scikit-learn, one hidden layer of 128) is trained on the real TRAIN split of the digits and must reach
--min-heldout accuracy on the real HELD-OUT split; it then labels the generated samples, and the score is the
fraction classified as their conditioning class. With --metrics, the loss curve is plotted to OUTDIR/loss.png.
The classifier sees exactly the committed split (tools/make_digits.py's load_split), at the same scale ([-1, 1]).

usage: digits_quality.py --samples S.safetensors [--metrics metrics.jsonl] [--out-dir DIR] [--min-heldout 0.97]
                         [--min-score 0.9] [--json summary.json]
Exit status 1 when the held-out accuracy or the score is below its bar.
"""
import argparse
import json
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_digits import load_split  # noqa: E402


def classifier(x, y):
    from sklearn.neural_network import MLPClassifier
    warnings.filterwarnings("ignore")  # adam's "not converged" at max_iter: accuracy is what is checked
    return MLPClassifier((128,), alpha=1e-2, max_iter=300, random_state=0).fit(x.reshape(len(x), -1), y)


def plot_loss(metrics, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in open(metrics) if line.strip()]
    steps, loss = [r["step"] for r in rows], [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, loss, lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (MSE on noise)")
    ax.set_yscale("log")
    ax.set_title(f"opendit train: digits ({len(rows)} log records)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return loss[-1]


def plot_grid(samples, labels, pred, path):
    """A larger picture of the samples than opendit's native 8x8 PNG: a row per class, red frame = misclassified."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    classes = sorted(set(labels.tolist()))
    per = max(int((labels == c).sum()) for c in classes)
    fig, axes = plt.subplots(len(classes), per, figsize=(per * 0.6, len(classes) * 0.6), dpi=100, squeeze=False)
    for r, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        for j in range(per):
            ax = axes[r][j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(idx):
                ax.imshow(samples[idx[j], 0], cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
                if pred[idx[j]] != c:
                    for s in ax.spines.values():
                        s.set_edgecolor("red"), s.set_linewidth(2)
            if j == 0:
                ax.set_ylabel(str(c), rotation=0, labelpad=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0.06, right=0.99, top=0.99, bottom=0.01)
    fig.savefig(path)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", required=True)
    ap.add_argument("--metrics")
    ap.add_argument("--out-dir")
    ap.add_argument("--min-heldout", type=float, default=0.97)
    ap.add_argument("--min-score", type=float, default=0.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    from safetensors.numpy import load_file

    xt, yt, xh, yh, _ = load_split()
    clf = classifier(xt, yt)
    heldout = float((clf.predict(xh.reshape(len(xh), -1)) == yh).mean())

    st = load_file(a.samples)
    samples = np.clip(st["samples"].astype(np.float32), -1, 1)
    labels = st["labels"].astype(np.int64)
    if samples.shape[1:] != (1, 8, 8):
        sys.exit(f"digits_quality: {a.samples}: samples of shape {samples.shape}, expected [N, 1, 8, 8]")
    pred = clf.predict(samples.reshape(len(samples), -1))
    score = float((pred == labels).mean())
    per_class = {int(c): float((pred[labels == c] == c).mean()) for c in sorted(set(labels.tolist()))}

    summary = {"heldout_accuracy": heldout, "score": score, "per_class": per_class, "samples": len(labels)}
    if a.out_dir:
        plot_grid(samples, labels, pred, os.path.join(a.out_dir, "samples_large.png"))
    if a.metrics:
        summary["final_loss"] = plot_loss(a.metrics, os.path.join(a.out_dir or ".", "loss.png"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)
    print(f"classifier (MLP 64-128-10) accuracy on the {len(yh)} held-out real digits: {100 * heldout:.1f}%")
    print(f"generated samples classified as their class: {100 * score:.1f}% of {len(labels)}  (per class: "
          + " ".join(f"{c}:{100 * v:.0f}" for c, v in per_class.items()) + ")")
    ok = True
    if heldout < a.min_heldout:
        print(f"FAIL: held-out accuracy {heldout:.3f} < {a.min_heldout}")
        ok = False
    if score < a.min_score:
        print(f"FAIL: score {score:.3f} < {a.min_score}")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
