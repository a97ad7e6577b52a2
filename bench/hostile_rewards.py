"""Attacks on rlvr's rewards and verifiers, as a hostile user would write them (issue 21 items 3,
4, 9, 10a; issue 17 item 2). Each attack is a zero-argument callable returning True when rlvr
handles it as designed:

    values      a user reward returning inf, -inf, NaN, None, 1e39, 10**400, numpy's inf: masked
                out of the completion's total (finite), NaN in its part; the weight NaN or 1e39 is
                refused naming the reward
    processes   a reward that hangs after starting `sleep` children: one time-out per call, no
                child left running; three time-outs in a row stop the run naming it; a reward that
                kills its own process, returns the wrong length or text: contained
    broken      a reward that raises on every completion stops the run naming it and its error;
                one that fails now and then keeps scoring the rest
    gameable    reasoning-gym's partial credit is not accuracy (the hedge "YesNo" on rg:syllogism);
                the doctor names a copied premise (rg:propositional_logic) and the majority answer
                (rg:syllogism), and finds nothing on subtraction
    numbers     "4 2" and "1,2" are not numbers; "1,234" is 1234

`attacks()` is what bench/bench_hostile.py runs; run this file alone to print the counts:

    .venv/bin/python bench/hostile_rewards.py
"""

from __future__ import annotations

import math
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TIMEOUT_S = 1.0
GOOD = "<think>\nx\n</think>\n<answer>1</answer>"


def _user_reward(source: str, name: str):
    """A user's reward from a file (untrusted: runs forked, as `rlvr train` runs it)."""
    from rlvr.rewards import load_reward

    with tempfile.TemporaryDirectory(prefix="rlvr_hostile_") as d:
        path = Path(d) / f"{name}.py"
        path.write_text(source)
        return load_reward(f"{path}:{name}")  # imported: the file is no longer needed


def _value_attack(expression: str) -> Callable[[], bool]:
    """A reward returning `expression` on the first completion and 1.0 on the second."""

    def attack() -> bool:
        from rlvr.rewards import format_reward, score

        fn = _user_reward(f"import math\nimport numpy as np\ndef value(completions, **kw):\n"
                          f"    return [{expression}, 1.0]\n", "value")
        result = score([("value", fn, 2.0), ("format", format_reward, 1.0)], [GOOD, GOOD], {}, timeout_s=10)
        part = result.parts["value"]
        return math.isnan(part[0]) and part[1] == 1.0 and result.total == [1.0, 3.0] and result.errors["value"] == 0

    return attack


def _weight_attack(weight: float) -> Callable[[], bool]:
    def attack() -> bool:
        from rlvr.rewards import format_reward, score

        try:
            score([("format", format_reward, weight)], [GOOD], {})
        except ValueError as e:
            return "'format'" in str(e)
        return False

    return attack


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def hanging_reward_with_children() -> bool:
    """Hangs after starting 3 `sleep 300`: one call, every completion 0, no sleep left running."""
    with tempfile.TemporaryDirectory(prefix="rlvr_hostile_") as tmp:
        return _hanging_reward_with_children(Path(tmp))


def _hanging_reward_with_children(d: Path) -> bool:
    from rlvr.rewards import score

    source = (f"import subprocess, time\ndef spawn(completions, **kw):\n"
              f"    open({str(d / 'calls')!r}, 'a').write('call\\n')\n"
              f"    kids = [subprocess.Popen(['sleep', '300']) for _ in range(3)]\n"
              f"    open({str(d / 'pids')!r}, 'a').write(''.join(f'{{k.pid}}\\n' for k in kids))\n"
              f"    time.sleep(1000)\n")
    fn = _user_reward(source, "spawn")
    result = score([("spawn", fn, 1.0)], ["a", "b", "c", "d"], {}, timeout_s=TIMEOUT_S)
    pids = [int(p) for p in (d / "pids").read_text().split()]
    left = [p for p in pids if _alive(p)]
    for pid in left:  # clean up after a failed defence
        subprocess.run(["kill", "-9", str(pid)], check=False)
    calls = (d / "calls").read_text().splitlines()
    return result.errors["spawn"] == 4 and len(calls) == 1 and len(pids) == 3 and not left


def leftover_children_of_a_normal_call() -> bool:
    """Returns at once but leaves a `sleep 300` behind: killed with the call's process group."""
    with tempfile.TemporaryDirectory(prefix="rlvr_hostile_") as tmp:
        return _leftover_children(Path(tmp))


def _leftover_children(d: Path) -> bool:
    from rlvr.rewards import score

    source = (f"import subprocess\ndef daemon(completions, **kw):\n"
              f"    p = subprocess.Popen(['sleep', '300'])\n"
              f"    open({str(d / 'pid')!r}, 'w').write(str(p.pid))\n"
              f"    return [1.0 for _ in completions]\n")
    result = score([("daemon", _user_reward(source, "daemon"), 1.0)], ["a"], {}, timeout_s=10)
    time.sleep(0.1)
    pid = int((d / "pid").read_text())
    alive = _alive(pid)
    if alive:
        subprocess.run(["kill", "-9", str(pid)], check=False)
    return result.parts["daemon"] == [1.0] and not alive


def timeouts_in_a_row_stop() -> bool:
    from rlvr.rewards import TIMEOUTS_TO_STOP, RewardFunctionError, score

    fn = _user_reward("import time\ndef hang(completions, **kw):\n    time.sleep(1000)\n", "hang")
    try:
        for _ in range(TIMEOUTS_TO_STOP):
            score([("hang", fn, 1.0)], ["a", "b"], {}, timeout_s=0.3)
    except RewardFunctionError as e:
        return "'hang'" in str(e) and "timed out" in str(e)
    return False


def _contained(source: str, name: str, completions: list[str], parts: list[float], errors: int) -> Callable[[], bool]:
    def attack() -> bool:
        from rlvr.rewards import score

        result = score([(name, _user_reward(source, name), 1.0)], completions, {}, timeout_s=10)
        return result.parts[name] == parts and result.errors[name] == errors

    return attack


def always_raising_reward_stops() -> bool:
    from rlvr.rewards import BROKEN_AFTER_CALLS, RewardFunctionError, score

    fn = _user_reward("def broken(completions, **kw):\n    return [1 / 0 for _ in completions]\n", "broken")
    try:
        for _ in range(BROKEN_AFTER_CALLS):
            score([("broken", fn, 1.0)], ["a", "b"], {})
    except RewardFunctionError as e:
        return "'broken'" in str(e) and "ZeroDivisionError" in str(e)
    return False


def hedge_is_not_accuracy() -> bool:
    from rlvr.tasks import get_task

    task = get_task("rg:syllogism", n=50, n_test=10)
    exs = task.train_examples()
    credit = sum(task.partial_credit("YesNo", ex) for ex in exs) / len(exs)
    return credit > 0.3 and all(task.verify("YesNo", ex) == 0.0 for ex in exs)


def _doctor_attack(task_name: str, rewards: str | None, expect: str | None) -> Callable[[], bool]:
    """The doctor's hack check warns naming `expect` (None: finds nothing)."""

    def attack() -> bool:
        from rlvr.config import load_config
        from rlvr.doctor import hack_finding, score_trivial_answers
        from rlvr.tasks import get_task

        task = get_task(task_name, **({"n": 100, "n_test": 10} if task_name.startswith("rg:") else {}))
        cfg = load_config(None, [f"task.name={task_name}"] + ([f"task.rewards={rewards}"] if rewards else []))
        finding = hack_finding(score_trivial_answers(task, cfg, n=50), task.name)
        return finding.severity == "ok" if expect is None else (finding.severity == "warn" and expect in finding.message)

    return attack


def _number_attack(text: str, value) -> Callable[[], bool]:
    def attack() -> bool:
        from rlvr.tasks.base import parse_number

        return parse_number(text) == value

    return attack


def attacks() -> list[tuple[str, Callable[[], bool]]]:
    """(name, attack) pairs; an attack returns True when rlvr handles it as designed."""
    out: list[tuple[str, Callable[[], bool]]] = []
    for label, expression in [("inf", "math.inf"), ("-inf", "-math.inf"), ("nan", "math.nan"), ("None", "None"),
                              ("1e39", "1e39"), ("10**400", "10**400"), ("numpy float32 inf", "np.float32('inf')"),
                              ("-3.5e38", "-3.5e38")]:
        out.append((f"reward value {label}", _value_attack(expression)))
    for weight in (math.nan, math.inf, 1e39):
        out.append((f"reward weight {weight}", _weight_attack(weight)))
    out += [
        ("hanging reward with sleep children", hanging_reward_with_children),
        ("reward leaving a child behind", leftover_children_of_a_normal_call),
        ("3 time-outs in a row", timeouts_in_a_row_stop),
        ("always-raising reward", always_raising_reward_stops),
        ("reward failing on one completion",
         _contained("def f(completions, **kw):\n    return [1 / (c != 'x') for c in completions]\n", "f",
                    ["a", "x", "b"], [1.0, 0.0, 1.0], 1)),
        ("reward killing its process",
         _contained("import os\ndef f(completions, **kw):\n    os._exit(1) if 'x' in completions else None\n"
                    "    return [1.0 for _ in completions]\n", "f", ["a", "x"], [1.0, 0.0], 1)),
        ("reward returning the wrong length",
         _contained("def f(completions, **kw):\n    return [1.0]\n", "f", ["a", "b"], [1.0, 1.0], 0)),
        ("reward returning text", _contained("def f(completions, **kw):\n    return ['high' for _ in completions]\n",
                                             "f", ["a"], [0.0], 1)),
        ("reward raising SystemExit", _contained("import sys\ndef f(completions, **kw):\n    sys.exit(0)\n",
                                                 "f", ["a"], [0.0], 1)),
        ("rg:syllogism hedge 'YesNo' as accuracy", hedge_is_not_accuracy),
        ("rg:propositional_logic premise copy (doctor)", _doctor_attack("rg:propositional_logic", None, "first premise")),
        ("rg:syllogism hedge under partial_credit (doctor)",
         _doctor_attack("rg:syllogism", "{accuracy: 1.0, partial_credit: 1.0}", "the hedge 'YesNo'")),
        ("rg:syllogism majority answer (doctor)", _doctor_attack("rg:syllogism", None, "most common train answer")),
        ("subtraction trivial answers (doctor)", _doctor_attack("subtraction", None, None)),
    ]
    for text, value in [("4 2", None), ("1,2", None), ("12,34", None), ("1 234", None), ("1,234", 1234),
                        ("12,345,678", 12345678), ("$1,234.", 1234)]:
        out.append((f"number {text!r}", _number_attack(text, value)))
    return out


def main() -> None:
    import logging

    logging.disable(logging.WARNING)  # the contained failures log warnings by design
    handled, worst = 0, (0.0, "")
    found = attacks()
    for name, attack in found:
        t0 = time.perf_counter()
        try:
            ok = bool(attack())
        except Exception as e:  # noqa: BLE001 - an attack that crashes the harness is not handled
            ok = False
            name = f"{name} ({type(e).__name__}: {e})"
        seconds = time.perf_counter() - t0
        worst = max(worst, (seconds, name))
        handled += ok
        print(f"{'ok  ' if ok else 'FAIL'} {seconds:6.2f} s  {name}")
    print(f"hostile rewards: {len(found)} inputs tried, {handled} handled as designed, "
          f"worst time {worst[0]:.2f} s ({worst[1]})")


if __name__ == "__main__":
    main()
