"""Hostile inputs at rlvr's edges, for bench/bench_hostile.py: bad configs (types, ranges, YAML alias
bombs, files that are not UTF-8), a teacher server that echoes the API key back, a teacher that gives
nothing, missing or broken model and data files, and the same through the `rlvr` command.

Each attack returns True when rlvr handled it as designed: the error is the intended kind, names
the option or file, shows no secret, and no traceback reaches the user.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "RLVR_HOSTILE_TEACHER_KEY"
KEY = "sk-proj-Zq9/Xv+7Lm=Pw3Rt8Yb2Nc5Hd1Kf6Gj4"

# (override, text the error must contain): types (issue 16 item 5) and ranges (issue 21 item 6)
BAD_OVERRIDES = [
    ("grpo.epsilon_high=abc", "grpo.epsilon_high: expected a number or null"),
    ("sft.use_peft=maybe", "sft.use_peft: expected true, false or null"),
    ("model.use_peft=2", "model.use_peft"),
    ("eval.max_new_tokens=lots", "eval.max_new_tokens"),
    ("task.chat=maybe", "task.chat"),
    ("task.system_prompt=[a, b]", "task.system_prompt"),
    ("model.lora_target_modules={a: 1}", "model.lora_target_modules"),
    ("model.dtype=fp8", "model.dtype"),
    ("sampling.backend=sglang", "sampling.backend"),
    ("task.prefill=null", "task.prefill"),
    ("task.options=[1, 2]", "task.options"),
    ("run.report_to={a: 1}", "run.report_to"),
    ("grpo.max_steps=0", "grpo.max_steps"),
    ("grpo.max_steps=-5", "grpo.max_steps"),
    ("grpo.max_steps=inf", "grpo.max_steps"),
    ("grpo.max_steps=nan", "grpo.max_steps"),
    ("grpo.max_steps=1e400", "grpo.max_steps"),
    ("grpo.max_steps=true", "grpo.max_steps"),
    ("grpo.num_iterations=0", "grpo.num_iterations"),
    ("grpo.steps_per_generation=0", "grpo.steps_per_generation"),
    ("grpo.num_generations=1", "grpo.num_generations"),
    ("grpo.prompts_per_step=0", "grpo.prompts_per_step"),
    ("grpo.per_device_train_batch_size=0", "grpo.per_device_train_batch_size"),
    ("grpo.learning_rate=nan", "grpo.learning_rate"),
    ("grpo.learning_rate=-1e-5", "grpo.learning_rate"),
    ("grpo.epsilon=-0.2", "grpo.epsilon"),
    ("grpo.epsilon_high=inf", "grpo.epsilon_high"),
    ("grpo.delta=0.5", "grpo.delta"),
    ("grpo.delta=1.1", "grpo.delta"),
    ("grpo.beta=-0.04", "grpo.beta"),
    ("grpo.max_grad_norm=0", "grpo.max_grad_norm"),
    ("grpo.adam_beta2=1", "grpo.adam_beta2"),
    ("grpo.warmup_ratio=2", "grpo.warmup_ratio"),
    ("grpo.sapo_temperature_pos=0", "grpo.sapo_temperature_pos"),
    ("grpo.loss_type=ppo", "grpo.loss_type"),
    ("grpo.scale_rewards=std", "grpo.scale_rewards"),
    ("grpo.logprob_chunk_size=0", "grpo.logprob_chunk_size"),
    ("sampling.top_p=2", "sampling.top_p"),
    ("sampling.top_p=0", "sampling.top_p"),
    ("sampling.top_k=-5", "sampling.top_k"),
    ("sampling.temperature=-1", "sampling.temperature"),
    ("sampling.max_completion_length=0", "sampling.max_completion_length"),
    ("task.reward_timeout=0", "task.reward_timeout"),
    ("task.reward_timeout=-3", "task.reward_timeout"),
    ("task.rewards={}", "task.rewards"),
    ("task.rewards={accuracy: .nan}", "task.rewards.accuracy"),
    ("task.rewards={accuracy: .inf}", "task.rewards.accuracy"),
    ("task.rewards={accuracy: -.inf}", "task.rewards.accuracy"),
    ("task.rewards={accuracy: 1e39}", "task.rewards.accuracy"),
    ("task.rewards={accuracy: 0}", "task.rewards"),
    ("task.rewards={accuracy: yes}", "task.rewards.accuracy"),
    ("eval.n=-1", "eval.n"),
    ("eval.samples=0", "eval.samples"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("sft.epochs=0", "sft.epochs"),
    ("sft.num_examples=0", "sft.num_examples"),
    ("sft.batch_size=-1", "sft.batch_size"),
    ("curriculum.target=1", "curriculum.target"),
    ("curriculum.window=0", "curriculum.window"),
    ("run.max_bad_steps=0", "run.max_bad_steps"),
    ("run.keep_checkpoints=0", "run.keep_checkpoints"),
    ("run.seed=-1", "run.seed"),
    ("run.output_dir=", "run.output_dir"),
    ("run.doctor=maybe", "run.doctor"),
    ("model.lora_r=0", "model.lora_r"),
    ("model.lora_dropout=1.5", "model.lora_dropout"),
    ("model.device=gpu", "model.device"),
    ("sft.teacher_base_url=file:///etc/passwd", "sft.teacher_base_url"),
    ("grpo.learnin_rate=1e-5", "did you mean 'learning_rate'"),
]

BOMB = "\n".join(["task:", "  options:", "    a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
    f"    {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(6)]) + "\n"
"""~350 bytes that expand to 10 million scalars (issue 21 item 8: 8.9 s and 10.6 MB on save)"""


def attacks() -> list[tuple[str, Callable[[], bool]]]:
    """Every attack of this module: (name, zero-argument callable -> handled as designed)."""
    found: list[tuple[str, Callable[[], bool]]] = [
        (f"override {o}", _override(o, must)) for o, must in BAD_OVERRIDES]
    found += [
        ("python-set value sft.use_peft='maybe'", _python_value),
        ("api key pasted as teacher_api_key_env", _key_as_env_name),
        ("yaml alias bomb file (348 bytes)", _config_file(BOMB, "anchors and aliases")),
        ("yaml recursive alias", _config_file("task:\n  options: &a {x: *a}\n", "anchors and aliases")),
        ("yaml nested 20,000 deep", _config_file("task: {options: {a: " + "[" * 20_000 + "]" * 20_000 + "}}\n", "")),
        ("yaml alias bomb in an override", _bomb_override),
        ("config file in Latin-1", _config_bytes("task:\n  system_prompt: caf\xe9\n".encode("latin-1"), "not UTF-8")),
        ("config file of binary bytes", _config_bytes(bytes(range(256)) * 4, "")),
        ("config file is a list", _config_file("- grpo\n- 3\n", "must be a mapping")),
        ("config section is a number", _config_file("grpo: 3\n", "section 'grpo'")),
        ("config value typed wrong in YAML", _config_file("grpo:\n  epsilon_high: abc\n", "grpo.epsilon_high")),
        ("missing config file", _missing_config),
    ]
    found += _teacher_attacks()
    found += [
        ("model: missing ./relative path", _model_error("./no-such-model-dir", "no such directory")),
        ("model: missing /absolute path", _model_error("/nonexistent/rlvr/model", "no such directory")),
        ("model: a file, not a directory", _model_file),
        ("model: empty model.safetensors", _empty_safetensors),
        ("model: truncated model.safetensors", _truncated_safetensors),
        ("model: Hub id with HF_HUB_OFFLINE=1", _hub_offline),
        ("model: Hub id, Hub unreachable", _hub_unreachable),
        ("data: Latin-1 JSONL task", _data_file("jsonl", '{"question": "caf\xe9", "answer": "1"}\n', "not UTF-8")),
        ("data: Latin-1 CSV task", _data_file("csv", "question,answer\ncaf\xe9,1\n", "not UTF-8")),
        ("data: JSONL line that is a list", _data_file("jsonl", "[1, 2]\n", "expected a JSON object", "utf-8")),
        ("data: JSONL line not JSON", _data_file("jsonl", "{oops\n", "not JSON", "utf-8")),
        ("data: empty JSONL", _data_file("jsonl", "\n\n", "no rows", "utf-8")),
        ("data: missing JSONL", _missing_data),
        ("demos: Latin-1 demonstrations JSONL", _latin1_demos),
        ("cli: rlvr train grpo.max_steps=0", _cli(["train", "grpo.max_steps=0"], "grpo.max_steps must be >= 1")),
        ("cli: rlvr train --config alias bomb", _cli_bomb),
        ("cli: rlvr sft sft.use_peft=maybe", _cli(["sft", "sft.use_peft=maybe"], "sft.use_peft: expected")),
    ]
    return found


# ---------------------------------------------------------------------------------------------
# Config attacks


def _raises(fn: Callable[[], object], kind: type[BaseException], *must: str, never: str = "") -> bool:
    """True when `fn()` raises `kind` whose message contains every `must` text and not `never`."""
    try:
        fn()
    except kind as err:
        text = str(err)
        return all(m in text for m in must) and not (never and never in text)
    return False


def _override(override: str, must: str) -> Callable[[], bool]:
    from rlvr.config import ConfigError, load_config

    return lambda: _raises(lambda: load_config(None, [override]), ConfigError, must)


def _python_value() -> bool:
    from rlvr.config import Config, ConfigError

    cfg = Config()
    cfg.sft.use_peft = "maybe"  # type: ignore[assignment]
    return _raises(cfg.finalize, ConfigError, "sft.use_peft")


def _key_as_env_name() -> bool:
    from rlvr.config import ConfigError, load_config

    return _raises(lambda: load_config(None, [f"sft.teacher_api_key_env={KEY}"]), ConfigError,
                   "sft.teacher_api_key_env", never=KEY[:8])


def _config_bytes(data: bytes, must: str) -> Callable[[], bool]:
    def attack() -> bool:
        from rlvr.config import ConfigError, load_config

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "hostile.yaml"
            path.write_bytes(data)
            return _raises(lambda: load_config(path), ConfigError, str(path), must)
    return attack


def _config_file(text: str, must: str) -> Callable[[], bool]:
    return _config_bytes(text.encode("utf-8"), must)


def _bomb_override() -> bool:
    from rlvr.config import ConfigError, load_config

    levels = ["a: &a [1,1,1,1,1,1,1,1,1,1]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(5)]
    return _raises(lambda: load_config(None, ["task.options={" + ", ".join(levels) + "}"]), ConfigError,
                   "override 'task.options'", "anchors and aliases")


def _missing_config() -> bool:
    from rlvr.config import ConfigError, load_config

    return _raises(lambda: load_config("/nonexistent/rlvr.yaml"), ConfigError, "/nonexistent/rlvr.yaml")


# ---------------------------------------------------------------------------------------------
# The teacher: an echoing server, bad keys, nothing accepted


class EchoServer:
    """A localhost HTTP server answering every POST with `status` and a body that echoes the
    Authorization header (in `form`), after `pad` characters (to put the key at the 200-char cut)."""

    def __init__(self, status: int, pad: int = 0, form: Callable[[str], str] = lambda a: a):
        self.status, self.pad, self.form, self.headers = status, pad, form, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (stdlib name)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                auth = self.headers.get("Authorization", "")
                server.headers.append(auth)
                body = ("e" * server.pad + server.form(auth)).encode()
                self.send_response(server.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    """Environment variables set (None: unset) for the block, then restored."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


class _Logs:
    """Every log record of the block (all loggers, DEBUG and up), as text."""

    def __enter__(self):
        import logging

        self.lines: list[str] = []
        self.handler = logging.Handler(logging.DEBUG)
        self.handler.emit = lambda record: self.lines.append(record.getMessage())  # type: ignore[method-assign]
        self.root = logging.getLogger()
        self.level = self.root.level
        self.root.addHandler(self.handler)
        self.root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        self.root.removeHandler(self.handler)
        self.root.setLevel(self.level)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _leaks(text: str, key: str = KEY) -> bool:
    """Whether any form of the key (whole, JSON- or URL-escaped, its first or last 8 characters) is in `text`."""
    forms = {key, json.dumps(key)[1:-1], urllib.parse.quote(key, safe=""), key[:8], key[-8:]}
    return any(f in text for f in forms)


def _teacher_run(server: EchoServer, key: str, out: Path, n: int = 2):
    from rlvr.demos import run_teacher_job
    from rlvr.tasks import get_task

    task = get_task("subtraction", n=20, high=10)
    with _env(**{KEY_ENV: key}):
        return run_teacher_job(task, task.train_examples()[:n], base_url=server.base_url, model="m",
                               out_path=out, api_key_env=KEY_ENV, concurrency=1, max_retries=1, timeout_s=5.0,
                               backoff_base_s=0.001, max_backoff_s=0.01, abort_after_failures=None)


def _echo_attack(status: int, pad: int = 0, form: Callable[[str], str] = lambda a: a,
                 key: str = KEY + "\n") -> Callable[[], bool]:
    """The key (with a secret mount's trailing newline) must reach the server stripped, and never
    show in logs, errors, failure reasons or the output file."""
    def attack() -> bool:
        from rlvr.demos import TeacherAPIError

        with tempfile.TemporaryDirectory() as tmp, _Logs() as logs, EchoServer(status, pad, form) as server:
            out = Path(tmp) / "t.jsonl"
            try:
                result = _teacher_run(server, key, out)
                shown = repr(result.failures) + result.summary()
            except TeacherAPIError as err:
                shown = str(err)
            shown += logs.text + (out.read_text() if out.exists() else "")
            return bool(server.headers) and all(h == f"Bearer {KEY}" for h in server.headers) and not _leaks(shown)
    return attack


def _bad_key(key: str, what: str) -> Callable[[], bool]:
    """A key with whitespace or non-ASCII inside: refused at start, unshown, nothing sent."""
    def attack() -> bool:
        from rlvr.demos import TeacherAPIError

        with tempfile.TemporaryDirectory() as tmp, _Logs() as logs, EchoServer(200) as server:
            try:
                _teacher_run(server, key, Path(tmp) / "t.jsonl")
            except TeacherAPIError as err:
                return what in str(err) and not server.headers and not _leaks(str(err) + logs.text, key)
            return False
    return attack


def _zero_demos() -> bool:
    """sft.source=teacher and every request refused: stop before training, with counts and reasons."""
    from rlvr.config import load_config
    from rlvr.demos import TeacherAPIError
    from rlvr.sft import load_demonstrations
    from rlvr.tasks import get_task

    task = get_task("subtraction", n=20, high=10)
    with tempfile.TemporaryDirectory() as tmp, EchoServer(400) as server, _env(**{KEY_ENV: KEY}):
        cfg = load_config(None, [f"run.output_dir={tmp}", "sft.source=teacher", f"sft.teacher_base_url={server.base_url}",
                                 f"sft.teacher_api_key_env={KEY_ENV}"])
        return _raises(lambda: load_demonstrations(cfg, task, task.train_examples()[:3]), TeacherAPIError,
                       "3 requested, 3 failed", "HTTP 400", never=KEY[:8])


def _teacher_attacks() -> list[tuple[str, Callable[[], bool]]]:
    quote = lambda a: urllib.parse.quote(a, safe="")  # noqa: E731
    return [
        ("teacher key + newline, 5xx echo", _echo_attack(500)),
        ("teacher key + CRLF, 5xx echo", _echo_attack(503, key=KEY + "\r\n")),
        ("teacher 400 echo", _echo_attack(400)),
        ("teacher 401 echo", _echo_attack(401)),
        ("teacher 200 non-JSON echo", _echo_attack(200)),
        ("teacher echo at the 200-char cut", _echo_attack(500, pad=183)),
        ("teacher echo cut short by the server", _echo_attack(429, form=lambda a: a[:19])),
        ("teacher echo JSON-escaped", _echo_attack(500, form=json.dumps)),
        ("teacher echo URL-quoted", _echo_attack(500, form=quote)),
        ("teacher echo repeated 1000x", _echo_attack(500, form=lambda a: a * 1000)),
        ("teacher key with inner space", _bad_key(KEY[:10] + " " + KEY[10:], "whitespace")),
        ("teacher key with inner newline", _bad_key(KEY[:10] + "\n" + KEY[10:], "whitespace")),
        ("teacher key non-ASCII", _bad_key(KEY[:10] + "\u00e9" + KEY[10:], "not printable ASCII")),
        ("teacher: zero demonstrations", _zero_demos),
    ]


# ---------------------------------------------------------------------------------------------
# Model and data files


def _model_error(spec: str, must: str) -> Callable[[], bool]:
    def attack() -> bool:
        from rlvr.models import ModelNotFound, load_model

        return _raises(lambda: load_model(spec), ModelNotFound, must)
    return attack


def _model_file() -> bool:
    from rlvr.models import ModelNotFound, load_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(b"x")
        return _raises(lambda: load_model(str(path)), ModelNotFound, str(path), "is a file")


def _weights(data: bytes) -> bool:
    from rlvr.models import ModelNotFound, load_model

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text('{"model_type": "llama"}')
        (Path(tmp) / "model.safetensors").write_bytes(data)
        return _raises(lambda: load_model(tmp), ModelNotFound, str(Path(tmp) / "model.safetensors"))


def _empty_safetensors() -> bool:
    return _weights(b"")


def _truncated_safetensors() -> bool:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    return _weights(len(header).to_bytes(8, "little") + header + b"\0" * 10)


def _hub_offline() -> bool:
    with _env(HF_HUB_OFFLINE="1"):
        return _model_error("rlvr-hostile/no-such-model", "HF_HUB_OFFLINE")()


def _hub_unreachable() -> bool:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with _env(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_OFFLINE=None):
        return _model_error("rlvr-hostile/no-such-model", "cannot be reached")()


def _data_file(kind: str, text: str, must: str, encoding: str = "latin-1") -> Callable[[], bool]:
    def attack() -> bool:
        from rlvr.tasks.custom import ColumnsTask

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"data.{kind}"
            path.write_bytes(text.encode(encoding))
            return _raises(lambda: ColumnsTask(f"{kind}:{path}"), ValueError, str(path), must)
    return attack


def _missing_data() -> bool:
    from rlvr.tasks.custom import ColumnsTask

    return _raises(lambda: ColumnsTask("jsonl:/nonexistent/data.jsonl"), OSError, "/nonexistent/data.jsonl")


def _latin1_demos() -> bool:
    from rlvr.demos import DemoFileError, load_demos_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demos.jsonl"
        path.write_bytes('{"prompt": "caf\xe9", "completion": "<answer>1</answer>"}\n'.encode("latin-1"))
        return _raises(lambda: load_demos_jsonl(path), DemoFileError, str(path), "not UTF-8")


# ---------------------------------------------------------------------------------------------
# The command line: one line on stderr, exit 1, no traceback


def _run_cli(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "rlvr.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _cli(args: list[str], must: str) -> Callable[[], bool]:
    def attack() -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            done = _run_cli(args, tmp)
            return done.returncode == 1 and must in done.stderr and "Traceback" not in done.stderr + done.stdout
    return attack


def _cli_bomb() -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.yaml"
        path.write_text(BOMB)
        done = _run_cli(["train", "--config", str(path), f"run.output_dir={tmp}/run"], tmp)
        return (done.returncode == 1 and "anchors and aliases" in done.stderr and str(path) in done.stderr
                and "Traceback" not in done.stderr and not (Path(tmp) / "run").exists())
