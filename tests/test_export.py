"""Shipping a run: the GGUF round trip (export, load back with transformers, same logits and tokens),
the portable base reference of a saved adapter, and push_to_hub as far as a machine without the Hub
goes (the upload built, refused fast and clearly without a token or a reachable endpoint)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from rlvr.export import (ExportError, HubError, _permute_qk, build_upload, export_gguf, find_model_dir,
                         preflight, push_to_hub)

PROMPTS = ["What is 12 - 5?", "<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n",
           "Countdown: reach 24 with 3, 8, 1 and 1."]
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SECRET = "hf_secretTOKENthatMustNeverBePrinted"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir):
    """A finished run as `rlvr train` leaves it: final/merged, final/adapter, summary.json."""
    from rlvr.models import attach_lora, save_pretrained_atomic
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path_factory.mktemp("runs") / "my-run"
    shutil.copytree(tiny_dir, run / "final" / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    save_pretrained_atomic(attach_lora(base, r=2, fused=False), AutoTokenizer.from_pretrained(tiny_dir),
                           run / "final" / "adapter")
    summary = {"model": "smollm2-135m", "task": "subtraction", "steps": 3,
               "before_after": [{"stage": "before", "accuracy": 0.12, "format_rate": 0.5, "n": 200},
                                {"stage": "after", "accuracy": 0.455, "format_rate": 0.97, "n": 200}]}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture(scope="module")
def exported(run_dir):
    """The run exported once per dtype: {dtype: path}."""
    return {dtype: export_gguf(run_dir, run_dir / f"out-{dtype}.gguf", dtype=dtype) for dtype in ("f32", "f16", "q8_0")}


def _logits(model, tokenizer) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**tokenizer(p, return_tensors="pt")).logits[0] for p in PROMPTS]  # [T, V] each


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


# ------------------------------------------------------------------------------------------ the writer


def test_permute_qk_interleaves_rotate_half_pairs():
    # one head of size 4: HF rotates row 0 with row 2 and 1 with 3 (rotate-half); llama.cpp rotates
    # adjacent rows, so the rows must come out as [0, 2, 1, 3]
    w = np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # [4, 3]
    assert _permute_qk(w, n_head=1)[:, 0].tolist() == [0, 2, 1, 3]
    # two heads of size 4 each: the same within each head -> [0, 2, 1, 3, 4, 6, 5, 7]
    assert _permute_qk(np.arange(8, dtype=np.float32), n_head=2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_metadata_is_what_llama_cpp_reads(exported, tiny_smol):
    import gguf

    model, tokenizer = tiny_smol
    reader = gguf.GGUFReader(str(exported["f16"]))
    field = {name: f.contents() for name, f in reader.fields.items()
             if name not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")}
    # tiny_random_model: hidden 64, 2 layers, 4 heads (head_dim 16), 2 kv heads, intermediate 128, ctx 2048
    assert field["general.architecture"] == "llama"
    assert field["general.name"] == "my-run"  # RUN/final/merged -> the run's name
    assert (field["llama.block_count"], field["llama.embedding_length"], field["llama.feed_forward_length"]) == (2, 64, 128)
    assert (field["llama.attention.head_count"], field["llama.attention.head_count_kv"]) == (4, 2)
    assert (field["llama.context_length"], field["llama.rope.dimension_count"]) == (2048, 16)
    assert field["llama.vocab_size"] == model.config.vocab_size == len(tokenizer)
    assert field["llama.rope.freq_base"] == pytest.approx(10000.0)  # LlamaConfig's default
    assert field["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert field["general.file_type"] == 1  # MOSTLY_F16
    # the tokenizer: byte-level BPE, SmolLM's pre-tokenizer (by the hash of the probe text), ids 1/2/2
    assert (field["tokenizer.ggml.model"], field["tokenizer.ggml.pre"]) == ("gpt2", "smollm")
    assert (field["tokenizer.ggml.bos_token_id"], field["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert field["tokenizer.ggml.padding_token_id"] == 2
    assert field["tokenizer.ggml.add_bos_token"] is False  # SmolLM2 adds no BOS
    assert field["tokenizer.chat_template"] == tokenizer.chat_template
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types[1] == types[2] == 3 and types[100] == 1  # <|im_start|>, <|im_end|> CONTROL; a word NORMAL
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied embeddings: llama.cpp reuses token_embd
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "F16"
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"  # norms stay f32
    assert list(tensors["blk.1.attn_k.weight"].shape) == [64, 32]  # GGUF order [in, out]: 2 kv heads x 16


@pytest.mark.parametrize("dtype, bound", [
    ("f32", 1e-5),  # the same float32 numbers: measured max difference 0
    ("f16", 2e-3),  # half precision weights: measured 3.8e-4 on logits of size ~1
    ("q8_0", 5e-2),  # 8-bit blocks: measured 9.7e-3
])
def test_gguf_round_trip_logits(exported, tiny_smol, dtype, bound):
    model, tokenizer = tiny_smol
    loaded = _load_gguf(exported[dtype])
    for ref, out in zip(_logits(model, tokenizer), _logits(loaded, tokenizer)):
        assert (out - ref).abs().max().item() < bound
        assert torch.equal(out.argmax(-1), ref.argmax(-1))


def test_gguf_round_trip_tokenizer(exported, tiny_smol):
    from transformers import AutoTokenizer

    _, tokenizer = tiny_smol
    path = exported["f16"]
    loaded = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in PROMPTS + ["héllo 😀 it'll  be\n\n  fine", "1234567 + 89 = ?"]:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (loaded.bos_token, loaded.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert loaded.chat_template == tokenizer.chat_template


def test_qwen2_round_trip(tmp_path, smol_tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).float().eval()
    for name, p in model.named_parameters():  # Qwen2's q/k/v biases start at 0: make them count
        if name.endswith("bias"):
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(tmp_path / "qwen")
    smol_tokenizer.save_pretrained(tmp_path / "qwen")
    path = export_gguf(tmp_path / "qwen", tmp_path / "qwen.gguf", dtype="f32")
    loaded = _load_gguf(path)
    ids = smol_tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        assert (loaded(**ids).logits - model(**ids).logits).abs().max().item() < 1e-5


def test_refuses_what_it_cannot_write(tmp_path, run_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ExportError, match="this model is GPT2LMHeadModel"):
        export_gguf(tmp_path / "gpt2", tmp_path / "x.gguf")
    with pytest.raises(ExportError, match="dtype 'q4'"):
        export_gguf(run_dir, tmp_path / "x.gguf", dtype="q4")
    with pytest.raises(ExportError, match="LoRA adapter"):
        export_gguf(run_dir / "final" / "adapter", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    assert find_model_dir(run_dir) == run_dir / "final" / "merged"


def test_cli_export_gguf(run_dir, tmp_path):
    from typer.testing import CliRunner

    from rlvr.cli import app

    result = CliRunner().invoke(app, ["export", str(run_dir), "--gguf", "--dtype", "q8_0"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "final" / "model-q8_0.gguf").is_file()  # the default path
    assert "model-q8_0.gguf" in result.output and "MB" in result.output
    result = CliRunner().invoke(app, ["export", str(run_dir)])
    assert result.exit_code != 0 and "--gguf" in result.output


@pytest.mark.skipif(__import__("importlib").util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (pip install llama-cpp-python compiles llama.cpp)")
def test_llama_cpp_generates_what_transformers_generates(exported, tiny_smol):
    from llama_cpp import Llama

    model, tokenizer = tiny_smol
    ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]  # [1, T]
    expected = []  # greedy by hand: generate() would stop at EOS, llama.cpp's generator does not
    with torch.no_grad():
        for _ in range(8):
            expected.append(int(model(ids).logits[0, -1].argmax()))
            ids = torch.cat([ids, torch.tensor([[expected[-1]]])], dim=1)
    ids = ids[:, :-8]
    llm = Llama(model_path=str(exported["f32"]), n_ctx=128, verbose=False)
    got = []
    for token in llm.generate(ids[0].tolist(), temp=0.0, top_k=1):
        got.append(token)
        if len(got) == 8:
            break
    assert got == expected


# ------------------------------------------------------------------------------ portable base reference


def test_adapter_on_the_bundled_cache_copy_records_the_hub_id(tmp_path, monkeypatch, tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.models import attach_lora, portable_base_reference, save_pretrained_atomic

    monkeypatch.setenv("RLVR_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct.Q4_1-0123456789ab"  # as dequantise_gguf names it
    shutil.copytree(tiny_dir, cached)
    assert portable_base_reference(str(cached)) == HUB_ID
    assert portable_base_reference(str(tiny_dir)) == str(tiny_dir)  # any other base stays as it is
    assert portable_base_reference("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    model = AutoModelForCausalLM.from_pretrained(cached)
    save_pretrained_atomic(attach_lora(model, r=2, fused=False), AutoTokenizer.from_pretrained(cached), tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == HUB_ID
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert f"base_model: {HUB_ID}" in card and str(cached) not in card


# ---------------------------------------------------------------------------------------- push_to_hub


def test_upload_is_built_from_the_run(run_dir):
    plan = build_upload(run_dir, "me/subtraction-grpo", private=True)
    assert plan.folder == run_dir / "final" / "merged" and plan.private
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(plan.files)
    assert "README.md" not in plan.files
    card = plan.card
    assert card.startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\nlibrary_name: transformers\n")
    assert "`subtraction`" in card
    assert "| before | 12.0% | 50.0% | 200 |" in card and "| after | 45.5% | 97.0% | 200 |" in card  # 0.455 -> 45.5%
    assert 'AutoModelForCausalLM.from_pretrained("me/subtraction-grpo")' in card
    adapter = build_upload(run_dir, "me/subtraction-grpo-lora", what="adapter")
    assert adapter.folder == run_dir / "final" / "adapter" and "adapter_model.safetensors" in adapter.files
    assert "library_name: peft" in adapter.card and "AutoPeftModelForCausalLM" in adapter.card
    with pytest.raises(ExportError, match="not a Hub repo id"):
        build_upload(run_dir, "not a repo id!")


def test_push_refused_offline_without_contacting_anything(run_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(HubError, match="HF_HUB_OFFLINE") as err:
        push_to_hub(run_dir, "me/x", token=SECRET)
    assert time.monotonic() - t0 < 10 and SECRET not in str(err.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connecting is refused


def test_push_fails_fast_on_an_unreachable_endpoint(run_dir, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(HubError, match="cannot reach http://127.0.0.1") as err:
        push_to_hub(run_dir, "me/x", token=SECRET, endpoint=endpoint)
    assert time.monotonic() - t0 < 10 and SECRET not in str(err.value)


def test_preflight_gives_up_on_a_silent_endpoint():
    with socket.socket() as server:  # a real server that accepts the connection and never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        with pytest.raises(HubError, match=r"did not answer within 0.5 s"):
            preflight(f"http://127.0.0.1:{server.getsockname()[1]}", SECRET, timeout=0.5)


class _RefusingHub(BaseHTTPRequestHandler):
    """whoami-v2 as the Hub answers a bad token: 401."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(401)
        self.end_headers()
        self.wfile.write(b'{"error": "Invalid credentials in Authorization header"}')

    def log_message(self, *args):
        pass


def test_preflight_reports_a_refused_token_without_printing_it():
    server = HTTPServer(("127.0.0.1", 0), _RefusingHub)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(HubError, match=r"refused the token \(HTTP 401\)") as err:
            preflight(f"http://127.0.0.1:{server.server_address[1]}", SECRET, timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert server.seen == [("/api/whoami-v2", f"Bearer {SECRET}")]
    assert SECRET not in str(err.value)


class _LocalHub(BaseHTTPRequestHandler):
    """The Hub API calls an upload makes, answered as the Hub answers them for small files (every
    file "regular", none through LFS), recording what was sent."""

    def _reply(self, obj, code=200):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's name
        self._reply({"name": "me", "auth": {}} if self.path == "/api/whoami-v2" else {}, 200 if "whoami" in self.path else 404)

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.calls.append((self.path, self.headers.get("Authorization"), body))
        host = self.headers["Host"]
        if self.path == "/api/repos/create":
            return self._reply({"url": f"http://{host}/me/x", "name": "me/x", "id": "1"})
        if self.path == "/api/validate-yaml":
            return self._reply({"errors": [], "warnings": []})
        if self.path.endswith("/preupload/main"):
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if self.path.endswith("/commit/main"):
            return self._reply({"commitUrl": f"http://{host}/me/x/commit/0123", "commitOid": "0" * 40})
        self._reply({}, 404)

    def log_message(self, *args):
        pass


def test_push_sends_the_folder_and_the_card_in_one_commit(run_dir, monkeypatch):
    import base64

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = HTTPServer(("127.0.0.1", 0), _LocalHub)
    server.calls = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = push_to_hub(run_dir, "me/x", token=SECRET, private=True, endpoint=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert url.endswith("/me/x/commit/0123")
    paths = [path for path, _, _ in server.calls]
    assert paths == ["/api/repos/create", "/api/validate-yaml", "/api/models/me/x/preupload/main", "/api/models/me/x/commit/main"]
    assert all(auth == f"Bearer {SECRET}" for _, auth, _ in server.calls)
    assert json.loads(server.calls[0][2]) == {"name": "x", "organization": "me", "visibility": "private", "type": "model"}
    lines = [json.loads(line) for line in server.calls[-1][2].decode().splitlines()]
    files = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines if line["key"] == "file"}
    assert set(files) == set(build_upload(run_dir, "me/x").files) | {"README.md"}
    assert files["config.json"] == (run_dir / "final" / "merged" / "config.json").read_bytes()
    assert b"| after | 45.5% |" in files["README.md"]


def test_cli_push_without_a_token_says_how_to_give_one(run_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "hf")  # no saved token
    proc = subprocess.run([sys.executable, "-m", "rlvr", "export", str(run_dir), "--push-to-hub", "me/x"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert "no Hugging Face token; pass --token, set HF_TOKEN" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one line, no traceback


# --------------------------------------------------------------------------------- the real 135M model
# (No 135M round trip through transformers here: its GGUF loader alone took ~2 min for this model on
# the shared test machine, past the 60 s a slow test may take; the tiny model above checks that path.)


@pytest.mark.slow
def test_bundled_model_exports_as_llama_cpps_own_converter_did(tmp_path):
    """The bundled SmolLM2 GGUF was written by llama.cpp's convert_hf_to_gguf.py (then quantised to
    Q4_1); rlvr's cache holds it dequantised. Exporting that copy must give the same file layout:
    every metadata value (tokens, merges, token types, template, ids, hyper-parameters), every tensor
    name and shape, and the same q/k weights (a wrong permutation would differ by the weights' size)."""
    import gguf
    from gguf.quants import dequantize

    from rlvr.models import bundled_gguf

    path = export_gguf("smollm2-135m", tmp_path / "smollm2.gguf", dtype="q8_0")
    assert 135e6 < path.stat().st_size < 155e6  # 135M weights x 8.5 bits (measured 144.8 MB)
    ours, theirs = gguf.GGUFReader(str(path)), gguf.GGUFReader(str(bundled_gguf()))
    descriptive = {"general.basename", "general.finetune", "general.languages", "general.license",
                   "general.organization", "general.size_label", "general.type"}  # from the Hub card
    assert set(theirs.fields) - set(ours.fields) == descriptive
    assert set(ours.fields) - set(theirs.fields) == {"tokenizer.ggml.add_eos_token"}  # False, written explicitly
    for key in set(ours.fields) & set(theirs.fields):
        if not key.startswith(("general.", "GGUF.")):
            assert ours.fields[key].contents() == pytest.approx(theirs.fields[key].contents()), key
    mine, ref = {t.name: t for t in ours.tensors}, {t.name: t for t in theirs.tensors}
    assert {n: list(t.shape) for n, t in mine.items()} == {n: list(t.shape) for n, t in ref.items()}
    for name in ("blk.0.attn_q.weight", "blk.29.attn_k.weight", "token_embd.weight"):
        a = dequantize(mine[name].data, mine[name].tensor_type)
        b = dequantize(ref[name].data, ref[name].tensor_type)
        # the same numbers up to our Q8_0 rounding: <= max|w| / 254 per block, ~0.011 for |w| <= 2.85
        assert np.abs(a - b).max() < 0.05, name


@pytest.mark.slow
def test_bundled_adapter_loads_from_its_hub_id_offline(tmp_path, monkeypatch):
    from rlvr.models import attach_lora, load_model, save_pretrained_atomic

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_model("smollm2-135m", device="cpu", dtype="fp32")
    policy = attach_lora(model, r=2, fused=False)
    save_pretrained_atomic(policy, tokenizer, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    reloaded, _ = load_model(str(tmp_path / "adapter"), device="cpu", dtype="fp32")  # the bundled copy, no network
    ids = tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(reloaded(**ids).logits, policy(**ids).logits, atol=1e-4)
