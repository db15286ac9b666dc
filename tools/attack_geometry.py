"""Why an attack escapes: the restricted-domain gradient each start gives an attacker, and how far the attack moves it.

For normal, each checkpoint and scratch, under each attack and seed: the norm of the body's gradient on the
restricted training set at the start (fresh head, one batch of the whole set, train mode, as the attack's first
step sees it), the body's distance from its start after the attack (relative to the start's norm), and the
restricted metric at the end; and a scale-free linear probe (the body's features standardised, then a
logistic regression fitted on the restricted training set, scored on its test set), which says how much the
features know of the restricted domain whatever their scale. Where SOPHON protects by giving small gradients, a plain-SGD attacker barely moves
and an optimizer that normalises its steps (Adam, RMSprop, Adagrad, Adadelta) moves as far as from normal:

    python tools/attack_geometry.py --arch cnn --cnn_width 32 --seeds 3 --attacks "sgd-momentum:1e-2,rmsprop:1e-3" \
        --path klu=RUN/checkpoints/final.safetensors --out geometry.md
"""

import argparse
import math
import statistics
import sys

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader

from sophon.attack import finetune
from sophon.cli import parse_setting_args, user_errors
from sophon.experiment import build_task, load_protected, named_checkpoints
from sophon.rng import seeded
from sophon.task import move, replace_head


def _body(model, head_prefix: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith(head_prefix + ".")}


def start_gradient_norm(model, task, seed: int) -> float:
    """‖∇ body‖ of the restricted loss at the attack's start: a fresh head drawn as the attack draws it."""
    with seeded(seed, task.device):
        learner = task.learner(model)
    learner.train()
    batch = next(iter(DataLoader(task.restricted_train, batch_size=len(task.restricted_train))))
    learner.zero_grad(set_to_none=True)
    task.finetune_loss(learner, move(batch, task.device)).backward()
    grads = [p.grad for n, p in learner.named_parameters()
             if not n.startswith(task.head_prefix + ".") and p.grad is not None]
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads)))


@torch.no_grad()
def _features(model, task, dataset) -> tuple:
    body = replace_head(model, task.head_prefix, nn.Identity()).eval()
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=256):
        xs.append(body(x.to(task.device)).flatten(1).float().cpu())
        ys.append(y)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def scale_free_probe(model, task) -> float:
    """Test accuracy of a logistic regression on standardised features: what the body knows, not how
    easily a gradient finds it."""
    x_train, y_train = _features(model, task, task.restricted_train)
    x_test, y_test = _features(model, task, task.restricted_test)
    scaler = StandardScaler().fit(x_train)
    fit = LogisticRegression(max_iter=5000).fit(scaler.transform(x_train), y_train)
    return float(fit.score(scaler.transform(x_test), y_test))


def moved(model, task, attack, seed: int) -> tuple[float, float]:
    """(relative distance the body moved, final restricted metric) under one attack."""
    start = _body(model, task.head_prefix)
    end = {}
    curve = finetune(model, task, attack, seed=seed, progress=False,
                     after=lambda learner: end.update(_body(learner, task.head_prefix)))
    shared = [n for n in start if n in end]
    distance = math.sqrt(sum(float(((end[n] - start[n]) ** 2).sum()) for n in shared))
    norm = math.sqrt(sum(float((start[n] ** 2).sum()) for n in shared))
    return distance / norm, curve[-1][task.restricted_metric]


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3g} ± {std:.2g}"


@user_errors  # a bad name, a missing or corrupt checkpoint: one line, exit 2
def main(argv=None):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--path", nargs="*", default=[], help="NAME=CKPT of each SOPHON checkpoint")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    ns, rest = parser.parse_known_args(argv)
    args, setting = parse_setting_args(__doc__, rest + ["--device", "cpu"], default_arch="cnn")
    checkpoints = named_checkpoints(ns.path)
    task = build_task(args, setting, "ice")
    models = {"normal": setting.build_model(args, "normal")}
    models.update({name: load_protected(args, setting, path) for name, path in checkpoints.items()})
    models["scratch"] = setting.build_model(args, "scratch")
    seeds = list(range(args.seeds))
    lines = ["| start | scale-free probe % | start ‖∇ body‖ | attack | body moved (of its norm) | end " + task.restricted_metric + " |",
             "|---|---|---|---|---|---|"]
    for name, model in models.items():
        grad = _mean_std([start_gradient_norm(model, task, s) for s in seeds])
        probe = f"{100 * scale_free_probe(model, task):.1f}"
        for label, attack in args.attack_list.items():
            runs = [moved(model, task, attack, s) for s in seeds]
            lines.append(f"| {name} | {probe} | {grad} | `{label}` | {_mean_std([r[0] for r in runs])} | "
                         f"{_mean_std([100 * r[1] for r in runs])} |")
            print(lines[-1], flush=True)
    if ns.out:
        with open(ns.out, "w") as f:
            command = ' '.join(sys.argv[1:] if argv is None else argv)
            f.write(f"Attack seeds {seeds}; `python tools/attack_geometry.py {command}`\n\n")
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
