"""docs/TRL_OPTIONS.md: every TRL GRPOConfig option, and what rlvr does with it.

    python scripts/trl_options.py              write docs/TRL_OPTIONS.md from the code (rlvr.api, rlvr.trl_options)
    python scripts/trl_options.py --check      exit 1 when the file is not what the code gives
    python scripts/trl_options.py --extract TRL_GIT_DIR|installed
                                               re-read TRL's options (and the installed transformers'
                                               defaults) into docs/trl_grpo_options.json, from a TRL
                                               git directory or the installed trl (`pip install
                                               --no-deps trl`; the record is from TRL 1.16.0's wheel)

TRL is not installed where rlvr's tests run, so its option names and defaults are recorded in
docs/trl_grpo_options.json: `options` are the fields GRPOConfig itself declares (read from
trl/trainer/grpo_config.py with `ast`, no import); `inherited` are the TrainingArguments / ModelConfig
options rlvr.GRPOConfig takes, with TRL's defaults (TRL's _BaseConfig overrides, else transformers').
The classification is rlvr.trl_options': a field of rlvr.GRPOConfig is supported (with a reason in
DIFFERENT_DEFAULTS when its default is not TRL's, NO_EFFECT when it does nothing here); every other
option needs a reason in NOT_APPLICABLE. tests/test_trl_options.py checks both files.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "docs" / "trl_grpo_options.json"
TABLE = ROOT / "docs" / "TRL_OPTIONS.md"

INHERITED = {
    "TrainingArguments": ["output_dir", "seed", "report_to", "logging_steps", "disable_tqdm", "save_steps",
                          "save_total_limit", "push_to_hub", "hub_model_id", "hub_private_repo", "hub_token",
                          "max_steps", "num_train_epochs", "per_device_train_batch_size",
                          "gradient_accumulation_steps", "weight_decay", "adam_beta1", "adam_beta2", "warmup_steps",
                          "lr_scheduler_type", "max_grad_norm", "gradient_checkpointing", "bf16", "fp16",
                          "eval_strategy", "eval_steps", "per_device_eval_batch_size"],
    "ModelConfig": ["use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"],
}
"""the options rlvr.GRPOConfig takes that TRL's GRPOConfig inherits (or that TRL's ModelConfig holds)"""


# ------------------------------------------------------------------------------ reading TRL

def _git_show(git_dir: str, path: str) -> str:
    """A file of TRL: from a git directory's HEAD, or from an installed TRL (git_dir "installed")."""
    if git_dir == "installed":
        import importlib.util

        root = Path(importlib.util.find_spec("trl").origin).parent.parent  # type: ignore[arg-type]
        if path == "VERSION":
            from importlib.metadata import version

            return version("trl")
        return (root / path).read_text(encoding="utf-8")
    return subprocess.run(["git", "-C", git_dir, "show", f"HEAD:{path}"], check=True, capture_output=True,
                          text=True).stdout


def _class_fields(source: str, class_name: str) -> list[dict]:
    """[{name, type, default}] of a dataclass's own fields, read with ast (defaults as JSON values)."""
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    fields = []
    for stmt in cls.body:
        if not isinstance(stmt, ast.AnnAssign) or stmt.target.id.startswith("_"):  # type: ignore[union-attr]
            continue
        default = None
        if isinstance(stmt.value, ast.Call):
            for kw in stmt.value.keywords:
                if kw.arg == "default":
                    default = ast.literal_eval(kw.value)
        elif stmt.value is not None:
            default = ast.literal_eval(stmt.value)
        fields.append({"name": stmt.target.id, "type": ast.unparse(stmt.annotation), "default": default})  # type: ignore[union-attr]
    return fields


def extract(git_dir: str) -> dict:
    """TRL's option names and defaults from a TRL git directory (HEAD) and the installed transformers."""
    from transformers import TrainingArguments

    version = _git_show(git_dir, "VERSION").strip()
    commit = "PyPI wheel" if git_dir == "installed" else subprocess.run(
        ["git", "-C", git_dir, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    own = _class_fields(_git_show(git_dir, "trl/trainer/grpo_config.py"), "GRPOConfig")
    base = {f["name"]: f for f in _class_fields(_git_show(git_dir, "trl/trainer/base_config.py"), "_BaseConfig")}
    model = {f["name"]: f for f in _class_fields(_git_show(git_dir, "trl/trainer/model_config.py"), "ModelConfig")}
    training = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    inherited = []
    for name in INHERITED["TrainingArguments"]:
        if name in base:
            inherited.append({**base[name], "from": "TRL _BaseConfig"})
        else:
            f = training[name]
            default = f.default if f.default is not dataclasses.MISSING else None
            default = getattr(default, "value", default)  # enums (eval_strategy, lr_scheduler_type)
            inherited.append({"name": name, "type": str(f.type), "default": default, "from": "TrainingArguments"})
    inherited += [{**model[name], "from": "TRL ModelConfig"} for name in INHERITED["ModelConfig"]]
    import transformers

    return {"trl_version": version, "trl_commit": commit, "transformers_version": transformers.__version__,
            "source": "trl/trainer/grpo_config.py (GRPOConfig's own fields)", "options": own, "inherited": inherited}


# ------------------------------------------------------------------------------ the table

def classify(name: str, trl_default) -> tuple[str, str, str]:
    """(status, rlvr default, note) of one TRL option, from rlvr.api and rlvr.trl_options."""
    from rlvr import api, trl_options

    fields = {f.name: f for f in dataclasses.fields(api.GRPOConfig) if f.init}
    if name not in fields:
        return "not applicable", "", trl_options.NOT_APPLICABLE.get(name, "UNCLASSIFIED")
    f = fields[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    where = trl_options.destination(name)
    if name in trl_options.NO_EFFECT:
        return "accepted, no effect", _show(default), trl_options.NO_EFFECT[name]
    if default != trl_default or name in trl_options.DIFFERENT_DEFAULTS:  # bf16: the same None, another meaning
        return "supported, different default", _show(default), f"{where}; {trl_options.DIFFERENT_DEFAULTS.get(name, 'NO REASON')}"
    return "supported", _show(default), where


def _show(value) -> str:
    return "`" + json.dumps(value) + "`"


def render(data: dict) -> str:
    """The text of docs/TRL_OPTIONS.md."""
    lines = [
        "# TRL's GRPOConfig options in rlvr",
        "",
        "Generated by `python scripts/trl_options.py` from `rlvr.api`, `rlvr.trl_options` and `docs/trl_grpo_options.json` "
        f"(TRL {data['trl_version']}, {data['trl_commit'][:10]}; transformers {data['transformers_version']}); "
        "`tests/test_trl_options.py` checks it is up to date. Do not edit by hand.",
        "",
        "`rlvr.GRPOConfig` takes every option marked supported under TRL's name, with TRL's meaning, and converts it "
        "to rlvr's own `Config` (`rlvr.api.to_config`). In a YAML config or a `section.option=value` override the "
        "rlvr name in the notes is the one to use; a TRL name in the wrong section is an error that points to it.",
        "",
    ]
    counts: dict[str, int] = {}
    rows = []
    for group, title in (("options", "TRL GRPOConfig's own options"), ("inherited", "Inherited options rlvr takes")):
        rows.append(("", f"## {title}"))
        rows.append(("", ""))
        rows.append(("", "| TRL option | TRL default | status | rlvr default | in rlvr / why |"))
        rows.append(("", "|---|---|---|---|---|"))
        for opt in data[group]:
            status, ours, note = classify(opt["name"], opt["default"])
            counts[status] = counts.get(status, 0) + (group == "options")
            src = "" if group == "options" else f" ({opt['from']})"
            rows.append((status, f"| `{opt['name']}`{src} | {_show(opt['default'])} | {status} | {ours} | {note} |"))
        rows.append(("", ""))
    total = len(data["options"])
    lines.append(f"Of TRL GRPOConfig's {total} own options: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".")
    lines.append("")
    lines += [text for _, text in rows]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/TRL_OPTIONS.md is out of date")
    parser.add_argument("--extract", metavar="TRL_GIT_DIR", help="re-read TRL's options into the data file")
    args = parser.parse_args(argv)
    if args.extract:
        DATA.write_text(json.dumps(extract(args.extract), indent=1) + "\n")
        print(f"wrote {DATA}")
    text = render(json.loads(DATA.read_text()))
    if args.check:
        if not TABLE.exists() or TABLE.read_text() != text:
            print(f"{TABLE} is out of date: run python scripts/trl_options.py", file=sys.stderr)
            return 1
        return 0
    TABLE.write_text(text)
    print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
