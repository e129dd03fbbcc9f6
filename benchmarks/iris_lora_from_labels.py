"""A demo candidate: LoRA on SmolLM2-135M trained on Iris's gold labels, scored on test.

SmolLM2 is at chance on Iris with or without demos, and its passing traces are all of one
species, so BootstrapFinetune has nothing balanced to learn from; this measures whether
supervised LoRA on the labelled training flowers (the records rendered exactly as the program
prompts) lifts it.  Prints one JSON line: test accuracy before/after, training seconds, steps.

    COTUNE_LLAMA_THREADS=1 .venv/bin/python benchmarks/iris_lora_from_labels.py \\
        --seed 0 --epochs 3 --lr 1e-3 --train 50
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from cotune import ChatAdapter
from cotune.core.runtime import context
from cotune.core.signature import ensure_signature
from cotune.evaluate import Evaluate
from cotune.finetune import LoraSettings, LoraTrainer
from cotune.lm import LlamaCppLM
from cotune.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train", type=int, default=50)
    parser.add_argument("--out", default="benchmarks/out/iris-lora-labels")
    args = parser.parse_args()

    task = get_task("iris")
    splits = task.load_splits(seed=args.seed)
    predictor = task.make_program().predictors()[0]
    signature, adapter = ensure_signature(predictor.signature), ChatAdapter()
    records = [adapter.format_training_example(signature, [], dict(ex.inputs()),
                                               {"species": ex["species"]})
               for ex in splits.train[: args.train]]
    base = LlamaCppLM("smollm2-135m")
    trainer = LoraTrainer(LoraSettings(epochs=args.epochs, learning_rate=args.lr, batch_size=4,
                                       seed=args.seed), progress=False)
    start = time.perf_counter()
    tuned = trainer.fine_tune(base, records, f"{args.out}/seed{args.seed}-e{args.epochs}")
    train_s = time.perf_counter() - start
    scores, answers = {}, {}
    for name, lm in (("before", base), ("after", tuned)):
        with context(lm=lm):
            result = Evaluate(splits.test, task.metric, num_threads=2,
                              display_progress=False)(task.make_program())
        scores[name] = result.score
        answers[name] = dict(Counter(str((r.prediction or {}).get("species"))
                                     for r in result.results))
    last = trainer.last_result
    print(json.dumps({**vars(args), "test": scores, "answers": answers,
                      "train_s": round(train_s, 1), "steps": last.steps if last else None}))


if __name__ == "__main__":
    main()
