"""Task families: data, prompt/label agreement, generators, demonstrations, specs and errors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlvr.prompts import extract_answer
from rlvr.rewards import is_strict_format
from rlvr.tasks import get_task, list_tasks
from rlvr.tasks.base import Task, split_train_test
from rlvr.tasks.countdown import countdown_steps, solve, verify_countdown
from rlvr.tasks.subtraction import subtraction_steps

REPO = Path(__file__).resolve().parents[1]
GSM8K_DIR = REPO.parent / "shared" / "data" / "gsm8k"


def _demo_is_right(task, ex) -> bool:
    demo = task.demonstration(ex)
    return is_strict_format(demo) and task.verify(extract_answer(demo), ex) == 1.0


# ---------------------------------------------------------------------------- get_task


def test_list_tasks():
    names = [name for name, _ in list_tasks()]
    assert names[:3] == ["subtraction", "countdown", "gsm8k"]
    assert {"rg:NAME", "jsonl:PATH", "csv:PATH", "hf:DATASET_ID", "PATH.py[:Name]"} <= set(names)
    assert all(desc and "\n" not in desc for _, desc in list_tasks())


def test_unknown_task_and_option():
    with pytest.raises(ValueError, match="unknown task 'nope'.*subtraction"):
        get_task("nope")
    with pytest.raises(ValueError, match="unknown option.*hihg.*subtraction.*high"):
        get_task("subtraction", hihg=10)


def test_split_train_test():
    train, test = split_train_test(list(range(10)), test_fraction=0.2, seed=0)
    assert len(train) == 8 and len(test) == 2 and sorted(train + test) == list(range(10))
    assert split_train_test(list(range(10)), n_test=3, seed=0) == split_train_test(list(range(10)), n_test=3, seed=0)


# ---------------------------------------------------------------------------- subtraction


def _expression(question: str) -> tuple[int, int]:
    m = re.fullmatch(r"What is (-?\d+) - (-?\d+)\?", question)
    assert m, question
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("order", ["first_minus_second", "second_minus_first"])
def test_subtraction_question_and_label_agree(order):
    task = get_task("subtraction", n=500, order=order)
    for ex in task.train_examples() + task.test_examples():
        a, b = _expression(ex.question)
        assert int(ex.answer) == a - b == ex.metadata["difference"]
        assert (ex.metadata["minuend"], ex.metadata["subtrahend"]) == (a, b)


def test_subtraction_reproduces_seed_000():
    task = get_task("subtraction")  # n=8000, seed=42, [0, 1000), 20% test
    # seed 000's 6,400 / 1,600 split, less the 13 training rows that repeat a test problem
    assert (len(task.train_examples()), len(task.test_examples())) == (6387, 1600)
    rng = np.random.default_rng(42)  # seed 000's generator, verbatim
    numbers1 = rng.integers(0, 1000, 8000)
    numbers2 = rng.integers(0, 1000, 8000)
    seed_rows = sorted(zip(numbers2.tolist(), numbers1.tolist(), (numbers2 - numbers1).tolist()))
    ours = sorted((e.metadata["minuend"], e.metadata["subtrahend"], int(e.answer))
                  for e in task.train_examples() + task.test_examples())
    assert set(ours) == set(seed_rows) and len(ours) == 8000 - 13  # seed 000 shows "n2 n1" and labels n2 - n1: first minus second
    flipped = get_task("subtraction", n=50, order="second_minus_first")
    same = get_task("subtraction", n=50)
    assert [int(e.answer) for e in flipped.train_examples()] == [-int(e.answer) for e in same.train_examples()]


def test_subtraction_levels():
    task = get_task("subtraction", n=10)
    rng = np.random.default_rng(0)
    for level, high in [(1, 10), (2, 100), (3, 1000)]:
        for _ in range(50):
            ex = task.make_example(rng, level)
            assert 0 <= ex.metadata["minuend"] < high and 0 <= ex.metadata["subtrahend"] < high
    assert task.default_level == 3
    small = get_task("subtraction", n=10, high=100)
    assert small.default_level == 2 and all(e.metadata["minuend"] < 100 for e in small.train_examples())


def test_subtraction_demonstration_exact():
    assert subtraction_steps(512, 387) == (
        "512 > 387\n"
        "ones: 2<7, borrow: 12-7=5\n"
        "tens: 1-1=0, 0<8, borrow: 10-8=2\n"
        "hundreds: 5-1=4, 4-3=1\n"
        "= 125"
    )
    assert subtraction_steps(7, 512).splitlines()[0] == "7 < 512, so -(512 - 7)"
    assert subtraction_steps(7, 512).splitlines()[-1] == "= -505"
    assert subtraction_steps(12, 12).splitlines()[0] == "12 = 12"
    # borrowing through zeros: 1000 - 1 = 999
    assert subtraction_steps(1000, 1).splitlines()[2] == "tens: 0-1<0, borrow: 10-1=9"


def test_subtraction_demonstration_columns_spell_the_result():
    task = get_task("subtraction", n=300)
    for ex in task.train_examples():
        a, b = ex.metadata["minuend"], ex.metadata["subtrahend"]
        lines = subtraction_steps(a, b).splitlines()
        columns = [line for line in lines if line.split(":")[0] in ("ones", "tens", "hundreds")]
        digits = [re.findall(r"\d+", line)[-1] for line in columns]  # each column's last number
        assert int("".join(reversed(digits))) == abs(a - b)
        assert _demo_is_right(task, ex)
    # short: 40-80 tokens (digits are one token each); the longest 3-digit case has 156 characters
    assert max(len(task.demonstration(e)) for e in task.train_examples()) <= 160


# ------------------------------------------------------------------------------ countdown


def test_countdown_generates_only_solvable_problems():
    task = get_task("countdown", n=400, seed=1)
    examples = task.train_examples() + task.test_examples()
    assert len(examples) == 400 and len(task.test_examples()) == 40
    for ex in examples:
        nums, target = ex.metadata["nums"], ex.metadata["target"]
        assert len(nums) in (3, 4) and all(1 <= n <= 99 for n in nums) and 1 <= target <= 100
        assert ex.answer == str(target) and str(nums) in ex.question and str(target) in ex.question
        assert verify_countdown(ex.metadata["solution"], nums, target) == 1.0


def test_countdown_options_and_determinism():
    a = get_task("countdown", n=30, seed=5, num_numbers=4, n_test=10)
    b = get_task("countdown", n=30, seed=5, num_numbers=4, n_test=10)
    assert [e.metadata for e in a.train_examples()] == [e.metadata for e in b.train_examples()]
    assert len(a.test_examples()) == 10 and all(len(e.metadata["nums"]) == 4 for e in a.train_examples())
    rng = __import__("random").Random(0)
    assert len(a.make_example(rng, level=1).metadata["nums"]) == 2


def test_countdown_demonstrations():
    task = get_task("countdown", n=200)
    for ex in task.train_examples():
        assert _demo_is_right(task, ex)
    trace, expression = countdown_steps([44, 19, 35], 98)
    assert trace == "Target 98 from 44, 19, 35.\n44+19=63, 63+35=98, found" and expression == "(44 + 19) + 35"
    assert solve([1, 1], 5) is None


def test_countdown_with_the_calculator_tool():
    """tools=True: the same questions, the calculator offered (a multi-turn episode), and worked
    trajectories: the solver's equation computed by the real calculator, then answered and verified."""
    from rlvr.environments import ToolEnvironment, environment_for
    from rlvr.tasks.calculator import calculator

    plain, tools = get_task("countdown", n=60, seed=3), get_task("countdown", n=60, seed=3, tools=True)
    assert [e.question for e in plain.train_examples()] == [e.question for e in tools.train_examples()]
    assert not getattr(plain, "tools", None) and tools.tools == [calculator]
    assert isinstance(environment_for(tools), ToolEnvironment) and "calculator" in tools.system_prompt
    for ex in tools.train_examples():
        assert tools.demonstration(ex) is None
        call, result, final = tools.demonstration_messages(ex)
        assert [call["role"], result["role"], final["role"]] == ["assistant", "tool", "assistant"]
        assert "<tool_call>" in call["content"] and result["content"] == str(ex.metadata["target"])
        assert tools.verify(extract_answer(final["content"]), ex) == 1.0
    ex = plain.train_examples()[0]
    assert plain.demonstration_messages(ex) == [{"role": "assistant", "content": plain.demonstration(ex)}]


def test_countdown_hub_fails_clearly_offline():
    code = "from rlvr.tasks import get_task; get_task('countdown', source='hub', n=10)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "could not load Jiayi-Pan/Countdown-Tasks-3to4" in proc.stderr and "source='generate'" in proc.stderr


# ---------------------------------------------------------------------------------- gsm8k


@pytest.mark.skipif(not GSM8K_DIR.is_dir(), reason="shared GSM8K copy not present")
def test_gsm8k_local_copy(monkeypatch):
    task = get_task("gsm8k", path=str(GSM8K_DIR))
    assert (len(task.train_examples()), len(task.test_examples())) == (7473, 1319)
    ex = task.train_examples()[0]
    assert ex.answer == "72" and ex.question.startswith("Natalia sold clips")
    assert task.demonstration(ex) == (
        "<think>\nNatalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n</think>\n<answer>72</answer>"
    )
    assert all("," not in e.answer for e in task.train_examples())
    assert sum(e.answer == "1080" for e in task.train_examples()) >= 1  # "#### 1,080" in the data
    monkeypatch.setenv("RLVR_GSM8K_DIR", str(GSM8K_DIR))
    sub = get_task("gsm8k", n=10, n_test=200, seed=0)  # seed 001: 200 random test questions
    assert (len(sub.train_examples()), len(sub.test_examples())) == (10, 200)
    assert all(_demo_is_right(sub, e) for e in sub.train_examples())


def test_gsm8k_from_a_directory(tmp_path):
    rows = [{"question": "Q1?", "answer": "2 x 540 = <<2*540=1080>>1080 dollars\n#### 1,080"},
            {"question": "Q2?", "answer": "It is 3.\n#### 3"}]
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = get_task("gsm8k", path=str(tmp_path))
    ex = task.train_examples()[0]
    assert ex.answer == "1080" and ex.metadata["solution"] == "2 x 540 = <<2*540=1080>>1080 dollars"
    assert "<<" not in task.demonstration(ex)
    with pytest.raises(FileNotFoundError, match="no train.jsonl"):
        get_task("gsm8k", path=str(tmp_path / "missing"))


# -------------------------------------------------------------------------- reasoning-gym


@pytest.mark.parametrize("name", ["syllogism", "propositional_logic", "basic_arithmetic", "leg_counting"])
def test_rg_bridge_agrees_with_reasoning_gym(name):
    import reasoning_gym

    from rlvr.rewards import make_accuracy_reward, make_partial_credit_reward

    task = get_task(f"rg:{name}", n=20, n_test=10, seed=7)
    own = reasoning_gym.create_dataset(name, seed=7, size=20)
    reward, partial = make_accuracy_reward(task), make_partial_credit_reward(task)
    for ex, entry in zip(task.train_examples(), own):
        assert ex.question == entry["question"]
        wrong = "Yes" if entry["answer"] == "No" else "No"
        for candidate in [entry["answer"], wrong, "42", "", None, "(P ∧ Q)"]:
            expected = float(own.score_answer(candidate, entry))
            assert task.partial_credit(candidate, ex) == expected
            assert task.verify(candidate, ex) == float(expected == 1.0)  # accuracy: fully right only
            if candidate is not None:  # and through the reward paths
                completion = f"<think>\nok\n</think>\n<answer>{candidate}</answer>"
                credit = float(own.score_answer(candidate.strip(), entry))
                assert reward([completion], _example=[ex]) == [float(credit == 1.0)]
                assert partial([completion], _example=[ex]) == [credit]


def test_rg_train_and_test_differ():
    task = get_task("rg:basic_arithmetic", n=50, n_test=20)
    train_q = {e.question for e in task.train_examples()}
    assert len(task.test_examples()) == 20 and not train_q & {e.question for e in task.test_examples()}
    assert task.name == "rg:basic_arithmetic"


def test_rg_errors():
    with pytest.raises(ValueError, match="unknown reasoning-gym dataset 'nope'"):
        get_task("rg:nope")
    with pytest.raises(ValueError, match="bad option for rg:syllogism"):
        get_task("rg:syllogism", n=2, bogus=1)
    with pytest.raises(ValueError, match="test_seed=4 overlaps the train items"):
        get_task("rg:syllogism", n=2, seed=3, test_seed=4)  # item i comes from Random(seed + i)


# -------------------------------------------------------------------------- custom data


def test_jsonl_task(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"q": f"{i} + 1?", "a": i + 1, "level": i % 3}) for i in range(20)) + "\n\n")
    task = get_task(f"jsonl:{path}", question_column="q", answer_column="a", test_fraction=0.25)
    assert (len(task.train_examples()), len(task.test_examples())) == (15, 5)
    ex = task.train_examples()[0]
    assert ex.answer == str(int(ex.question.split()[0]) + 1)  # ints become text
    assert set(ex.metadata) == {"level", "q", "a"}  # other columns, and q / a under their own names
    assert ex.metadata["a"] == int(ex.answer)  # unchanged (an int), as TRL passes it
    assert task.verify(f" {ex.answer}.0 ", ex) == 1.0 and task.verify("x", ex) == 0.0


def test_csv_task_and_plain_path(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer\nCapital of France?,Paris\nCapital of Italy?,Rome\n2+2?,4\n")
    task = get_task(str(path), n_test=1)  # *.csv without the prefix
    assert len(task.train_examples()) == 2 and len(task.test_examples()) == 1
    ex = next(e for e in task.train_examples() + task.test_examples() if e.answer == "Paris")
    assert task.verify("paris", ex) == 1.0


def test_missing_column_is_a_clear_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"problem": "hi", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"column 'question' not found .*columns present: problem, answer"):
        get_task(f"jsonl:{path}")
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("question,solution\nq,1\n")
    with pytest.raises(ValueError, match=r"column 'answer' not found .*question, solution.*answer_column"):
        get_task(f"csv:{csv_path}")


def test_bad_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n{oops\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: not JSON"):
        get_task(f"jsonl:{path}")


def test_example_data_file():
    task = get_task(str(REPO / "examples" / "my_data.jsonl"), n_test=2)
    assert len(task.train_examples()) + len(task.test_examples()) == 10


# ---------------------------------------------------------------------- a user's Python file


def test_python_file_task_from_examples():
    path = REPO / "examples" / "my_task.py"
    for spec in (str(path), f"{path}:ReverseWord"):
        task = get_task(spec, n=20, n_test=5)
        assert isinstance(task, Task) and task.name == "reverse_word"
        assert len(task.train_examples()) == 20 and len(task.test_examples()) == 5
        ex = task.train_examples()[0]
        assert ex.answer == ex.metadata["word"][::-1]
        assert _demo_is_right(task, ex) and task.verify("nope", ex) == 0.0
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "verify right: 1.0" in proc.stdout


def test_python_file_make_task_and_errors(tmp_path):
    path = tmp_path / "t.py"
    path.write_text(
        "from rlvr.tasks import get_task\n"
        "def make_task(**options):\n"
        "    return get_task('subtraction', n=10, **options)\n"
    )
    assert get_task(str(path), high=10).name == "subtraction"
    two = tmp_path / "two.py"
    two.write_text("from rlvr.tasks.base import Task\nclass A(Task): pass\nclass B(Task): pass\n")
    with pytest.raises(ValueError, match="2 Task subclasses"):
        get_task(str(two))
    with pytest.raises(ValueError, match="has no 'C'"):
        get_task(f"{two}:C")
    bad = tmp_path / "bad.py"
    bad.write_text("def make_task():\n    return 3\n")
    with pytest.raises(TypeError, match="not a rlvr Task"):
        get_task(str(bad))


def test_hf_task_from_a_local_dataset_dir(tmp_path):
    """`hf:` goes through `datasets.load_dataset`, which also reads a local directory (offline)."""
    data = tmp_path / "ds"
    data.mkdir()
    for split in ("train", "test"):
        rows = [{"problem": f"{split} {i}", "solution": str(i)} for i in range(3)]
        (data / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code = (
        "import sys; from rlvr.tasks import get_task\n"
        f"t = get_task('hf:{data}', question_column='problem', answer_column='solution')\n"
        "print(len(t.train_examples()), len(t.test_examples()), t.test_examples()[0].question)\n"
        f"get_task('hf:{data}')\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines()[0] == "3 3 test 0"
    assert "column 'question' not found" in proc.stderr and "columns present: problem, solution" in proc.stderr


@pytest.mark.parametrize("high", [10, 100, 1000])
def test_subtraction_held_out_problems_are_never_trained_on(high):
    # 8,000 draws from 0-99 repeat problems: about half the test problems were also training ones
    task = get_task("subtraction", high=high)
    train = {e.question for e in task.train_examples()}
    test = [e.question for e in task.test_examples()]
    assert train and test and not train & set(test)


def test_split_train_test_drops_training_items_that_are_test_items():
    items = ["a", "b", "a", "c", "b", "d"]
    plain_train, plain_test = split_train_test(items, n_test=2, seed=0)
    train, test = split_train_test(items, n_test=2, seed=0, key=str)
    assert test == plain_test  # the held-out set does not change
    assert train == [x for x in plain_train if x not in plain_test]
