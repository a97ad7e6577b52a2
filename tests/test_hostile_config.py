"""Hostile input at the edges (issue 21 items 2, 6, 7, 8; issue 16 item 5): bad option types and
ranges, YAML alias bombs, a teacher API key that a server echoes back, a teacher that gives nothing,
missing or broken model and data files. Each test names what it attacks and fails without the fix.
The teacher tests run a real HTTP server on localhost (stdlib `http.server` in a thread)."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from conftest import ROOT
from rlvr.config import Config, ConfigError, load_config
from rlvr.config_types import MAX_ALIAS_EXPANSION, RANGES

# ---------------------------------------------------------------------------------------------
# A. Types (issue 16 item 5): every option has one, checked at load


@pytest.mark.parametrize("override, message", [
    ("grpo.epsilon_high=abc", "grpo.epsilon_high: expected a number or null, got 'abc'"),
    ("sft.use_peft=maybe", "sft.use_peft: expected true, false or null, got 'maybe'"),
    ("eval.max_new_tokens=lots", "eval.max_new_tokens: expected a whole number or null, got 'lots'"),
    ("curriculum.min_level=1.5", "curriculum.min_level: expected a whole number or null, got 1.5"),
    ("task.chat=maybe", "task.chat: expected true, false or null, got 'maybe'"),
    ("task.system_prompt=[a, b]", "task.system_prompt: expected a string or null"),
    ("model.lora_target_modules={a: 1}", "model.lora_target_modules: expected a string or a list of strings"),
    ("task.rewards={accuracy: high}", "task.rewards.accuracy: expected a number, got 'high'"),
    ("model.dtype=fp8", "model.dtype: expected one of auto, fp32"),
    ("sampling.backend=sglang", "sampling.backend: expected one of auto, fast, hf, vllm, got 'sglang'"),
    ("grpo.scale_rewards=std", "grpo.scale_rewards: expected one of group, batch, none"),
    ("task.prefill=null", "task.prefill: expected a string, got None"),
    ("grpo.delta=yes", "grpo.delta: expected a number or null, got True"),  # YAML 1.1: yes is true
])
def test_wrong_types_name_the_option_and_the_type(override, message):
    with pytest.raises(ConfigError, match=_literal(message)):
        load_config(None, [override])


def test_wrong_types_in_yaml_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("grpo:\n  epsilon_high: abc\n")
    with pytest.raises(ConfigError, match=_literal("grpo.epsilon_high: expected a number or null, got 'abc'")):
        load_config(path)


@pytest.mark.parametrize("text, message", [
    ("grpo: 3\n", "section 'grpo' must be a mapping"),
    ("- grpo\n- 3\n", "section 'config' must be a mapping"),
    ("grpo:\n  max_steps: ten\n", "grpo.max_steps: expected a whole number"),
    ("task:\n  options: &a {x: *a}\n", "anchors and aliases refer to themselves"),
])
def test_errors_from_a_config_file_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"config file '{_literal(str(path))}'.*{_literal(message)}"):
        load_config(path)


def test_values_set_in_python_are_checked_by_finalize():
    cfg = Config()
    cfg.sft.use_peft = "maybe"
    with pytest.raises(ConfigError, match="sft.use_peft: expected true, false or null"):
        cfg.finalize()


def test_no_option_is_typed_any():
    for section in dataclasses.fields(Config):
        hints = get_type_hints(section.default_factory)  # type: ignore[arg-type]
        for name, hint in hints.items():
            assert hint is not Any, f"{section.name}.{name} is typed Any"


def test_yaml_booleans_keep_their_meaning():
    cfg = load_config(None, ["run.doctor=off", "grpo.scale_rewards=false", "task.chat=auto"])
    assert (cfg.run.doctor, cfg.grpo.scale_rewards, cfg.task.chat) == ("off", "none", None)


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_load_unchanged(preset):
    """Every preset loads; its values are those written in the file (a float stays a float)."""
    cfg = load_config(preset)
    import yaml

    for section, values in (yaml.safe_load(preset.read_text()) or {}).items():
        for name, value in values.items():
            assert getattr(getattr(cfg, section), name) == value, f"{section}.{name}"


# ---------------------------------------------------------------------------------------------
# B. Ranges (issue 21 item 6): every number has one


@pytest.mark.parametrize("override, message", [
    ("grpo.max_steps=0", "grpo.max_steps must be >= 1, got 0"),
    ("grpo.max_steps=-3", "grpo.max_steps must be >= 1, got -3"),
    ("grpo.max_steps=inf", "grpo.max_steps: expected a whole number, got 'inf'"),
    ("grpo.max_steps=nan", "grpo.max_steps: expected a whole number, got 'nan'"),
    ("grpo.num_iterations=0", "grpo.num_iterations must be >= 1, got 0"),
    ("grpo.steps_per_generation=0", "grpo.steps_per_generation must be >= 1, got 0"),
    ("sampling.top_p=2", "sampling.top_p must be in (0, 1], got 2.0"),
    ("sampling.top_p=0", "sampling.top_p must be in (0, 1], got 0.0"),
    ("sampling.top_k=-5", "sampling.top_k must be >= 0, got -5"),
    ("task.reward_timeout=0", "task.reward_timeout must be in (0, 86400], got 0.0"),
    ("task.reward_timeout=-1", "task.reward_timeout must be in (0, 86400]"),
    ("eval.n=-1", "eval.n must be >= 0, got -1"),
    ("run.max_bad_steps=0", "run.max_bad_steps must be >= 1, got 0"),
    ("grpo.learning_rate=nan", "grpo.learning_rate: expected a number, got 'nan'"),
    ("grpo.epsilon=-0.1", "grpo.epsilon must be in [0, 1]"),
    ("grpo.beta=-1", "grpo.beta must be >= 0"),
    ("model.lora_r=0", "model.lora_r must be >= 1"),
    ("model.lora_dropout=1", "model.lora_dropout must be in [0, 1)"),
    ("sft.epochs=0", "sft.epochs must be >= 1"),
    ("sft.num_examples=0", "sft.num_examples must be >= 1"),
    ("grpo.max_grad_norm=0", "grpo.max_grad_norm must be > 0"),
    ("curriculum.window=0", "curriculum.window must be >= 1"),
    ("grpo.sapo_temperature_neg=0", "grpo.sapo_temperature_neg must be > 0"),
    ("task.rewards={}", "task.rewards is empty"),
    ("task.rewards={accuracy: .nan}", "task.rewards.accuracy: expected a number, got nan"),
    ("task.rewards={accuracy: .inf}", "task.rewards.accuracy: expected a number, got inf"),
    ("task.rewards={accuracy: 1e39}", "task.rewards.accuracy: the weight must be a finite number with |weight| <= 1e+06"),
    ("task.rewards={accuracy: 0, format: 0}", "every weight is 0"),
    ("run.output_dir=", "run.output_dir must not be empty"),
    ("grpo.delta=1.1", "grpo.delta (1.1) must be > 1 + grpo.epsilon_high (1.2)"),
    ("model.device=gpu", "model.device must be auto, cpu, mps, cuda or cuda:N, got 'gpu'"),
    ("sft.teacher_base_url=ftp://example.com/v1", "sft.teacher_base_url must be an http:// or https:// URL"),
])
def test_out_of_range_values_are_named(override, message):
    with pytest.raises(ConfigError, match=_literal(message)):
        load_config(None, [override])


def test_curriculum_levels_in_order():
    with pytest.raises(ConfigError, match=_literal("curriculum.min_level (5) must be <= curriculum.max_level (2)")):
        load_config(None, ["curriculum.min_level=5", "curriculum.max_level=2"])


def test_every_number_has_a_range():
    for section in dataclasses.fields(Config):
        hints = get_type_hints(section.default_factory)  # type: ignore[arg-type]
        for name, hint in hints.items():
            if hint in (int, float) or hint in (int | None, float | None):
                assert f"{section.name}.{name}" in RANGES, f"{section.name}.{name} has no range"


def test_api_key_pasted_as_the_variable_name_is_refused_unshown():
    secret = "sk-live-0123456789abcdef"
    with pytest.raises(ConfigError, match="NAME of an environment variable") as info:
        load_config(None, [f"sft.teacher_api_key_env={secret}"])
    assert secret not in str(info.value)


def test_new_grpo_options_have_trl_defaults_and_loss_types():
    """TRL 1.16 GRPOConfig: delta None, sapo_temperature_pos 1.0, sapo_temperature_neg 1.05."""
    g = load_config().grpo
    assert (g.delta, g.sapo_temperature_pos, g.sapo_temperature_neg) == (None, 1.0, 1.05)
    assert load_config(None, ["grpo.delta=4"]).grpo.delta == 4.0
    for name in ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"):
        assert load_config(None, [f"grpo.loss_type={name}"]).grpo.loss_type == name
    with pytest.raises(ConfigError, match="grpo.loss_type 'ppo' is not one of grpo, dr_grpo, dapo, bnpo"):
        load_config(None, ["grpo.loss_type=ppo"])


# ---------------------------------------------------------------------------------------------
# C. YAML alias bomb (issue 21 item 8)

BOMB = "\n".join(["task:", "  options:", "    a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
    f"    {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(6)]) + "\n"
# 7 levels of x10: 10 million x once expanded, in ~350 bytes


def test_yaml_alias_bomb_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(path.read_bytes()) < 400
    with pytest.raises(ConfigError, match=f"config file '{_literal(str(path))}'.*anchors and aliases expand"):
        load_config(path)


def test_yaml_alias_bomb_in_an_override_is_refused():
    options = "{a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], " \
              "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], " \
              "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}"
    with pytest.raises(ConfigError, match="override 'task.options'.*anchors and aliases"):
        load_config(None, [f"task.options={options}"])


def test_a_few_aliases_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("task:\n  options: &o {high: 100}\ncurriculum:\n  window: 4\n")
    assert load_config(path).task.options == {"high": 100}
    # just under the bound: 9,000 nodes copied by aliases
    path.write_text("task:\n  options:\n    a: &a [" + ", ".join(["1"] * 900) + "]\n    b: ["
                    + ", ".join(["*a"] * 10) + "]\n")
    assert MAX_ALIAS_EXPANSION >= 9_000
    assert len(load_config(path).task.options["b"]) == 10


# ---------------------------------------------------------------------------------------------
# Missing or broken model and data files (issue 21 item 6)


def test_missing_local_model_path_is_named_as_a_path(tmp_path):
    from rlvr.models import ModelNotFound, load_model

    for spec in ("./no-such-model-dir", str(tmp_path / "absent")):
        with pytest.raises(ModelNotFound, match="no such directory") as info:
            load_model(spec)
        assert "Hub id" not in str(info.value).split("(")[0]


def test_empty_safetensors_names_the_file(tmp_path, tiny_dir):
    import shutil

    from rlvr.models import ModelNotFound, load_model

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFound, match=_literal(str(broken / "model.safetensors"))):
        load_model(str(broken))


def test_hub_id_without_network_fails_at_once(monkeypatch):
    """A closed localhost port as the Hub: one refused connection, then a clear error (before: five
    retries per file, ~45 s, then transformers' 'couldn't connect' text)."""
    from rlvr.models import ModelNotFound, load_model

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelNotFound, match="cannot be reached"):
        load_model("rlvr-test-org/no-such-model-4242")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE is set"):
        load_model("rlvr-test-org/no-such-model-4242")


def test_latin1_jsonl_and_csv_name_the_file(tmp_path):
    from rlvr.demos import DemoFileError, load_demos_jsonl
    from rlvr.tasks.custom import ColumnsTask

    data = tmp_path / "latin.jsonl"
    data.write_bytes('{"question": "ok", "answer": "1"}\n{"question": "café", "answer": "2"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=_literal(f"{data}:2: not UTF-8")):
        ColumnsTask(f"jsonl:{data}")
    table = tmp_path / "latin.csv"
    table.write_bytes("question,answer\ncafé,2\n".encode("latin-1"))
    with pytest.raises(ValueError, match=_literal(f"{table}:2: not UTF-8")):
        ColumnsTask(f"csv:{table}")
    demos = tmp_path / "demos.jsonl"
    demos.write_bytes('{"prompt": "café", "completion": "<answer>1</answer>"}\n'.encode("latin-1"))
    with pytest.raises(DemoFileError, match=_literal(f"{demos}:1: not UTF-8")):
        load_demos_jsonl(demos)


# ---------------------------------------------------------------------------------------------
# D. The teacher API key never leaks (issue 21 item 2)

KEY_ENV = "RLVR_HOSTILE_TEACHER_KEY"
KEY = "sk-proj-Zq9/Xv+7Lm=Pw3Rt8Yb2Nc5Hd1Kf6Gj4"


class EchoServer:
    """A real HTTP server that answers every POST with `status` and a body that echoes the request's
    Authorization header, after `pad` characters of filler (to put the key at a cut)."""

    def __init__(self, status: int = 500, pad: int = 0, form=lambda auth: auth):
        self.status, self.pad, self.form = status, pad, form
        self.headers: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (stdlib name)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                auth = self.headers.get("Authorization", "")
                server.headers.append(auth)
                body = ("e" * server.pad + server.form(auth)).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _teacher(server: EchoServer, out: Path, n: int = 2):
    from rlvr.demos import run_teacher_job
    from rlvr.tasks import get_task

    task = get_task("subtraction", n=20, high=10)
    return run_teacher_job(task, task.train_examples()[:n], base_url=server.base_url, model="m",
                           out_path=out, api_key_env=KEY_ENV, concurrency=1, max_retries=1,
                           timeout_s=5.0, backoff_base_s=0.001, max_backoff_s=0.01,
                           abort_after_failures=None)


def _leaks(text: str, key: str = KEY) -> list[str]:
    """The forms of the key (whole, escaped, or its first/last 8 characters) found in `text`."""
    import urllib.parse

    forms = {key, json.dumps(key)[1:-1], urllib.parse.quote(key, safe=""), key[:8], key[-8:]}
    return [f for f in forms if f in text]


@pytest.mark.parametrize("status, pad, form", [
    (500, 0, lambda a: a),                      # retried 5xx: logged, then the failure reason
    (400, 0, lambda a: a),                      # returned error
    (200, 0, lambda a: a),                      # a 200 that is not JSON: "malformed reply"
    (500, 183, lambda a: a),                    # the key starts at character 190: the 200-char cut
    (429, 0, lambda a: a[:19]),                 # the server cut the key short itself
    (500, 0, lambda a: json.dumps(a)),          # JSON-escaped ("\/")
    (500, 0, lambda a: __import__("urllib.parse").parse.quote(a, safe="")),  # URL-quoted
], ids=["5xx", "400", "200-malformed", "at-the-cut", "cut-by-server", "json-escaped", "url-quoted"])
def test_echoed_key_never_appears(tmp_path, monkeypatch, caplog, status, pad, form):
    monkeypatch.setenv(KEY_ENV, KEY + "\n")  # a secret mount's trailing newline
    caplog.set_level(logging.DEBUG)
    with EchoServer(status, pad, form) as server:
        result = _teacher(server, tmp_path / "t.jsonl")
    assert server.headers and all(h == f"Bearer {KEY}" for h in server.headers)  # stripped, then sent
    shown = caplog.text + repr(result.failures) + (tmp_path / "t.jsonl").read_text()
    assert result.failed == 2 and _leaks(shown) == [], shown


def test_echoed_key_in_an_auth_error_never_appears(tmp_path, monkeypatch):
    from rlvr.demos import TeacherAPIError

    monkeypatch.setenv(KEY_ENV, KEY + "\r\n")
    with EchoServer(401, 150) as server, pytest.raises(TeacherAPIError) as info:
        _teacher(server, tmp_path / "t.jsonl")
    assert "HTTP 401" in str(info.value) and _leaks(str(info.value)) == []


@pytest.mark.parametrize("bad, what", [(KEY[:10] + " " + KEY[10:], "whitespace"),
                                       (KEY[:10] + "\n" + KEY[10:], "whitespace"),
                                       (KEY[:10] + "é" + KEY[10:], "not printable ASCII")])
def test_malformed_key_is_refused_at_start_unshown(tmp_path, monkeypatch, caplog, bad, what):
    from rlvr.demos import TeacherAPIError

    monkeypatch.setenv(KEY_ENV, bad)
    caplog.set_level(logging.DEBUG)
    with EchoServer(200) as server, pytest.raises(TeacherAPIError, match=what) as info:
        _teacher(server, tmp_path / "t.jsonl")
    assert server.headers == []  # nothing was sent
    assert _leaks(str(info.value) + caplog.text, bad) == [] and KEY[:8] not in str(info.value)


def test_scrub_masks_every_form_and_cut():
    from rlvr.apikey import scrub_secret

    text = (f"raw {KEY}; repr {KEY!r}; bytes {KEY.encode()!r}; json {json.dumps(KEY)}; "
            f"start {KEY[:12]}...; end ...{KEY[-9:]}")
    # every form above becomes ***: the cut forms too (12 and 9 characters >= 8)
    assert scrub_secret(text, KEY) == "raw ***; repr '***'; bytes b'***'; json \"***\"; start ***...; end ...***"


# ---------------------------------------------------------------------------------------------
# E. A teacher that gives nothing stops SFT before training (issue 21 item 7)


def test_sft_with_no_teacher_demonstration_stops_before_training(tmp_path, tiny_dir, monkeypatch):
    from rlvr.demos import TeacherAPIError
    from rlvr.sft import run_sft

    monkeypatch.setenv(KEY_ENV, KEY)
    out = tmp_path / "sft"
    with EchoServer(400) as server:
        cfg = load_config(None, [
            f"model.name={tiny_dir}", "task.name=subtraction", "task.options={n: 40, high: 10}",
            f"run.output_dir={out}", "sft.source=teacher", f"sft.teacher_base_url={server.base_url}",
            f"sft.teacher_api_key_env={KEY_ENV}", "sft.num_examples=3", "eval.n=0", "run.quiet=true",
        ])
        with pytest.raises(TeacherAPIError, match="no usable demonstration") as info:
            run_sft(cfg)
    message = str(info.value)
    # 3 examples, each refused with HTTP 400 (not retried; the echoed key is scrubbed)
    assert "3 requested, 3 failed, 0 rejected" in message and "3 x HTTP 400" in message, message
    assert _leaks(message) == []
    assert not (out / "final").exists()


def _literal(text: str) -> str:
    import re

    return re.escape(text)


# ---------------------------------------------------------------------------------------------
# F. bench/bench_hostile.py counts what its modules report


def test_bench_hostile_counts_tried_handled_and_errors(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_hostile", ROOT / "bench" / "bench_hostile.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (tmp_path / "hostile_toy.py").write_text(
        "def attacks():\n"
        "    return [('ok', lambda: True), ('not handled', lambda: False), ('truthy', lambda: 1),\n"
        "            ('raises', lambda: 1 / 0)]\n")
    modules = bench.load_modules(tmp_path)
    rows = [bench.run_attack(m, name, fn) for m, mod in modules.items() for name, fn in mod.attacks()]
    summary = bench.summarise(rows)
    # only an attack returning True counts (1 is not True); the one that raises is recorded, not fatal
    assert (summary["tried"], summary["handled"]) == (4, 1)
    assert summary["per_module"] == {"hostile_toy": [1, 4]}
    assert "ZeroDivisionError" in rows[3]["error"] and rows[3]["handled"] is False
