"""`--resume RUN_DIR`: the run's saved args.json supplies every value the command line leaves out,
and a flag that would change the run is refused. A resumed run must be the run it continues; only
fields marked `resumable` in sophon/config.py (where things are, what runs them, how long the loop
goes on) may differ.
"""

import json
from dataclasses import fields
from pathlib import Path


def saved_args(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "args.json"
    if not path.exists():
        raise FileNotFoundError(f"--resume {run_dir}: no args.json there; pass the run folder printed when the "
                                "run started")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it, or start a new run") from None


def may_change(classes) -> set[str]:
    """The fields --resume lets the command line change, and --resume itself."""
    return {f.name for cls in classes for f in fields(cls) if f.metadata.get("resumable")} | {"resume"}


def refuse_changes(given: dict, saved: dict, allowed: set[str], run_dir: str | Path) -> None:
    """ValueError on the first flag given whose value differs from the run's saved one."""
    for name, value in given.items():
        if name in allowed or name not in saved or saved[name] == value:
            continue
        raise ValueError(f"--{name} {value} conflicts with the run's saved {saved[name]} "
                         f"({Path(run_dir) / 'args.json'}); drop the flag or start a new run")
