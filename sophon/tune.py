"""The tuned attacker: Optuna searches the fine-tuning that works best on the protected model.

Every later defence (TAR, RepNoise, SOPHON in NTLBench) was undone by attackers who simply tuned
the fine-tuning, so the evaluation runs this attacker first. Each trial is one seeded attack from
the protected start within `budget` optimizer steps; the objective is the final restricted
metric. The best attack is then run like any other, on every start and every seed.
"""

import optuna
from tqdm.auto import tqdm

from sophon.attack import METHODS, Attack, finetune
from sophon.optim import OPTIMIZERS, SCHEDULES
from sophon.rescale import scale_invariant_pairs
from sophon.suites import HAS_HEAD, usual_lr


def search(model, task, setting: str, trials: int, bs: int, epochs: int, budget: int, seed: int = 0,
           lr_scale: float = 1.0) -> tuple[Attack, optuna.Study]:
    """(best attack, study). lr is searched log-uniformly over two decades either side of the
    optimizer's usual lr; epochs up to 3x the preset's, every trial within `budget` steps; `rescale=1`
    too where the model has BatchNorm-fed layers (a free move that undoes a weight-scale trap)."""
    metric = task.restricted_metric
    methods = [m for m in METHODS if m != "head" or HAS_HEAD[setting]]
    can_rescale = bool(scale_invariant_pairs(model))

    def attack_of(params: dict) -> Attack:
        lr = usual_lr(setting, params["optimizer"], lr_scale) * 10 ** params["lr_decades"]
        # Within the step budget: fewer epochs when a small batch makes each epoch longer.
        per_epoch = -(-len(task.restricted_train) // params["bs"])
        epochs_in_budget = max(1, min(params["epochs"], budget // per_epoch))
        return Attack(params["optimizer"], float(f"{lr:.3g}"), params["bs"], epochs_in_budget, params["method"],
                      params["schedule"], rescale=params.get("rescale", False))

    def objective(trial: optuna.Trial) -> float:
        params = {"optimizer": trial.suggest_categorical("optimizer", OPTIMIZERS),
                  "lr_decades": trial.suggest_float("lr_decades", -2.0, 2.0),
                  "bs": trial.suggest_categorical("bs", sorted({max(2, bs // 2), bs, 2 * bs})),
                  "epochs": trial.suggest_categorical("epochs", sorted({epochs, 2 * epochs, 3 * epochs})),
                  "method": trial.suggest_categorical("method", methods),
                  "schedule": trial.suggest_categorical("schedule", SCHEDULES)}
        if can_rescale:  # only where it applies: a model without BatchNorm gets the same trials as before
            params["rescale"] = trial.suggest_categorical("rescale", [False, True])
        curve = finetune(model, task, attack_of(params), seed=seed + 7919 * (trial.number + 1), progress=False)
        return curve[-1][metric]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if task.restricted_higher_is_better else "minimize"
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
    with tqdm(total=trials, desc="tuned attacker (Optuna)", dynamic_ncols=True) as bar:
        study.optimize(objective, n_trials=trials,
                       callbacks=[lambda s, t: (bar.update(1), bar.set_postfix(best=f"{s.best_value:.4g}"))])
    return attack_of(study.best_params), study
