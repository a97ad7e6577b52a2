"""Tests of rlvr.demos: records, procedural and JSONL demos, and the teacher job against a real
OpenAI-like HTTP server on localhost (stdlib `http.server` in a thread, scripted per test)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlvr.demos import (
    Demo,
    DemoFileError,
    TeacherAPIError,
    build_teacher_messages,
    example_key,
    judge_reply,
    load_demos_jsonl,
    message_text,
    normalize_completion,
    parse_retry_after,
    procedural_demos,
    read_demos_jsonl,
    retry_delay,
    run_teacher_job,
    teacher_demos,
    write_demos_jsonl,
)
from rlvr.tasks.base import Example, Task

KEY_ENV = "RLVR_TEST_TEACHER_KEY"
SECRET = "sk-test-SECRET-4242"


class DoubleTask(Task):
    """A tiny task: double a number. Odd numbers have no procedural demonstration."""

    name = "double"

    def __init__(self, n: int = 6):
        self.examples = [Example(f"What is 2 * {i}?", str(2 * i), {"n": i}) for i in range(1, n + 1)]

    def train_examples(self) -> list[Example]:
        return self.examples

    def test_examples(self) -> list[Example]:
        return self.examples

    def user_message(self, example: Example) -> str:
        return example.question + " Answer with a number."

    def verify(self, answer: str | None, example: Example) -> float:
        return float(answer is not None and answer.strip() == example.answer)

    def demonstration(self, example: Example) -> str | None:
        n = example.metadata["n"]
        if n % 2:
            return None
        return f"<think>\n2 * {n} = {2 * n}\n</think>\n<answer>\n{2 * n}\n</answer>"


# ---------------------------------------------------------------------------------------------
# The scripted server


@dataclass
class Reply:
    status: int = 200
    answer: str | None = None  # None: the correct answer (read from the teacher prompt)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: str | None = None  # the whole message content, verbatim


class TeacherServer:
    """A real HTTP server answering POST /v1/chat/completions; `script(i, body) -> Reply` for the
    i-th request (0-based). Records every request's headers, body and arrival time."""

    def __init__(self, script=lambda i, body: Reply()):
        self.script = script
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (stdlib name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    index = len(server.requests)
                    server.requests.append({"path": self.path, "headers": dict(self.headers),
                                            "body": body, "time": time.monotonic()})
                reply = server.script(index, body)
                time.sleep(reply.delay)
                payload = server.payload(reply, body) if reply.status == 200 else {"error": {"message": "scripted"}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (time-out)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    @staticmethod
    def payload(reply: Reply, body: dict) -> dict:
        truth = re.search(r"Correct answer: (\S+)", body["messages"][-1]["content"]).group(1)
        answer = truth if reply.answer is None else reply.answer
        content = reply.raw if reply.raw is not None else (
            f"Sure.\n<think>I double the number and get {answer}.</think>\n<answer>{answer}</answer>")
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}]}

    def questions(self) -> list[str]:
        return [r["body"]["messages"][-1]["content"].split(" Answer")[0] for r in self.requests]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def run_teacher(server, task, out_path, examples=None, **options):
    """run_teacher_job with fast test settings (short back-off, one request at a time)."""
    settings = dict(base_url=server.base_url, model="teacher-1", out_path=out_path,
                    api_key_env=KEY_ENV, concurrency=1, max_retries=3, timeout_s=5.0,
                    backoff_base_s=0.01, max_backoff_s=2.0)
    settings.update(options)
    return run_teacher_job(task, task.examples if examples is None else examples, **settings)


# ---------------------------------------------------------------------------------------------
# Records, procedural and JSONL demos


def test_demo_records_round_trip(tmp_path):
    demos = [Demo("q1", "<think>\na\n</think>\n<answer>\n1\n</answer>", "1", {"n": 1}, "teacher"),
             Demo("q2", "c2", "", {}, "jsonl", [{"role": "user", "content": "q2"}])]
    path = write_demos_jsonl(tmp_path / "d.jsonl", demos)
    assert read_demos_jsonl(path) == demos
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"question": "q1", "completion": demos[0].completion, "answer": "1",
                     "metadata": {"n": 1}, "source": "teacher"}


def test_procedural_demos_skip_examples_without_demonstration():
    task = DoubleTask(4)
    demos = procedural_demos(task, task.examples)
    # n = 1..4: only the even ones (2, 4) have a demonstration
    assert [d.ground_truth for d in demos] == ["4", "8"]
    assert demos[0].question == "What is 2 * 2?"  # the example's question; user_message is applied later
    assert demos[0].completion == "<think>\n2 * 2 = 4\n</think>\n<answer>\n4\n</answer>"
    assert demos[0].source == "procedural" and demos[0].metadata == {"n": 2}


def test_load_demos_jsonl_strings_and_chat_messages(tmp_path):
    path = tmp_path / "mine.jsonl"
    lines = [{"prompt": "What is 2+2?", "completion": "<think>2+2</think><answer>4</answer>", "answer": 4, "level": 1},
             {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3+3?"}],
              "completion": [{"role": "assistant", "content": "<think>3+3</think><answer>6</answer>"}]}]
    path.write_text(json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n")
    first, second = load_demos_jsonl(path)
    assert (first.question, first.ground_truth, first.metadata, first.source) == ("What is 2+2?", "4", {"level": 1}, "jsonl")
    assert first.prompt_messages is None
    assert second.question == "3+3?" and second.prompt_messages == lines[1]["prompt"]
    assert second.completion == "<think>3+3</think><answer>6</answer>" and second.ground_truth == ""


def test_a_completion_with_tool_messages_is_a_trajectory(tmp_path):
    """A message-list completion holding tool messages keeps them (`Demo.messages`, trained on the
    assistant turns only) instead of joining the assistant texts; it survives a record round trip."""
    turns = [{"role": "assistant", "content": "<tool_call>{}</tool_call>"}, {"role": "tool", "content": "22"},
             {"role": "assistant", "content": "<think>22</think><answer>22</answer>"}]
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps({"prompt": "3*5+7?", "completion": turns, "answer": "22"}) + "\n"
                    + json.dumps({"prompt": "x?", "completion": [{"role": "tool", "content": "1"}]}) + "\n")
    with pytest.raises(DemoFileError, match=r"tools\.jsonl:2: a multi-turn completion needs assistant turns"):
        load_demos_jsonl(path)
    path.write_text(path.read_text().splitlines()[0] + "\n")
    (demo,) = load_demos_jsonl(path)
    assert demo.messages == turns and demo.completion == turns[-1]["content"]
    assert read_demos_jsonl(write_demos_jsonl(tmp_path / "again.jsonl", [demo])) == [demo]


def test_load_demos_jsonl_other_column_names(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"q": "x?", "a": "<answer>1</answer>"}) + "\n")
    (demo,) = load_demos_jsonl(path, prompt_key="q", completion_key="a")
    assert (demo.question, demo.completion) == ("x?", "<answer>1</answer>")


def test_load_demos_jsonl_missing_key_names_key_and_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n"
                    + json.dumps({"prompt": "c", "response": "d"}) + "\n")
    with pytest.raises(DemoFileError, match=r"mine\.jsonl:2: missing key 'completion'.*'response'"):
        load_demos_jsonl(path)


def test_load_demos_jsonl_malformed_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + '{"prompt": "c", \n')
    with pytest.raises(DemoFileError, match=r"mine\.jsonl:2: not valid JSON"):
        load_demos_jsonl(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(DemoFileError, match=r":1: expected a JSON object, got list"):
        load_demos_jsonl(path)


# ---------------------------------------------------------------------------------------------
# Pure helpers of the teacher job


def test_retry_delay_exponential_with_jitter_and_retry_after():
    rng = random.Random(0)
    # attempt 0, base 0.5: d = 0.5, equal jitter -> [0.25, 0.5]
    assert 0.25 <= retry_delay(0, base_s=0.5, max_s=60, retry_after_s=None, rng=rng) <= 0.5
    # attempt 3: d = 0.5 * 2**3 = 4 -> [2, 4]
    assert 2.0 <= retry_delay(3, base_s=0.5, max_s=60, retry_after_s=None, rng=rng) <= 4.0
    # attempt 10: 0.5 * 1024 = 512, capped at 60 -> [30, 60]
    assert 30.0 <= retry_delay(10, base_s=0.5, max_s=60, retry_after_s=None, rng=rng) <= 60.0
    # the server's Retry-After wins (no jitter), capped at max_s
    assert retry_delay(0, base_s=0.5, max_s=60, retry_after_s=7.0, rng=rng) == 7.0
    assert retry_delay(0, base_s=0.5, max_s=60, retry_after_s=100.0, rng=rng) == 60.0


def test_parse_retry_after():
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "1"}) == 0.25  # ms wins (OpenAI)
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None
    assert 8.0 < parse_retry_after({"Retry-After": time.strftime(  # an HTTP date 10 s ahead
        "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))}) <= 10.0


def test_normalize_completion_keeps_think_and_last_answer_after_it():
    text = "Sure!\n<think> 2*3 is 6 </think>\n<answer>5</answer> <answer> 6 </answer> bye"
    assert normalize_completion(text) == "<think>\n2*3 is 6\n</think>\n<answer>6</answer>"
    assert normalize_completion("<answer>6</answer>") is None  # no think
    assert normalize_completion("<think>x</think> 6") is None  # no answer
    assert normalize_completion("<think> </think><answer>6</answer>") is None  # empty think
    assert normalize_completion("<answer>6</answer><think>x</think>") is None  # answer before think
    # an answer tag written while thinking: a bad example to imitate
    assert normalize_completion("<think>is it <answer>5</answer>?</think><answer>6</answer>") is None


def test_judge_reply_and_reasoning_field():
    task = DoubleTask(3)
    ex = task.examples[2]  # 2 * 3 = 6
    assert judge_reply(task, ex, "<think>t</think><answer>6</answer>").accepted
    wrong = judge_reply(task, ex, "<think>t</think><answer>7</answer>")
    assert (wrong.accepted, wrong.reason, wrong.extracted, wrong.score) == (False, "wrong answer", "7", 0.0)
    assert judge_reply(task, ex, "<answer>6</answer>").reason == "format"
    assert judge_reply(task, ex, "<think>t</think><answer>7</answer>", verify=False).accepted
    response = {"choices": [{"message": {"content": "<answer>6</answer>", "reasoning_content": "3+3"}}]}
    assert message_text(response) == "<think>\n3+3\n</think>\n<answer>6</answer>"
    assert judge_reply(task, ex, message_text(response)).accepted


def test_teacher_prompt_contains_answer_and_format():
    task = DoubleTask(2)
    system, user = build_teacher_messages(task, task.examples[1])
    assert "<think>" in system["content"] and "<answer>" in system["content"]
    assert user["content"].startswith("What is 2 * 2? Answer with a number.\n\nCorrect answer: 4")
    assert example_key(task.examples[1]) == example_key(Example("What is 2 * 2?", "4"))
    assert example_key(task.examples[1]) != example_key(task.examples[0])


# ---------------------------------------------------------------------------------------------
# The teacher job against a real server


def test_teacher_rejection_sampling_key_header_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    task = DoubleTask(6)

    def script(i, body):  # answers for n = 1..6 in order (one request at a time)
        if i == 4:
            return Reply(raw="I think it is 10.")  # no tags: rejected for its format
        return Reply(answer="0") if i % 2 == 0 else Reply()  # n = 1, 3 wrong; 2, 4, 6 right

    out = tmp_path / "teacher.jsonl"
    with TeacherServer(script) as server:
        result = run_teacher(server, task, out, temperature=0.5)
    assert [d.ground_truth for d in result.demos] == ["4", "8", "12"]
    assert result.counts() == {"requested": 6, "accepted": 3, "rejected": 3, "failed": 0,
                               "resumed": 0, "retries": 0, "demos": 3}
    assert result.demos[0].completion == "<think>\nI double the number and get 4.\n</think>\n<answer>4</answer>"
    assert (result.demos[0].question, result.demos[0].source) == ("What is 2 * 2?", "teacher")
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert request["body"]["model"] == "teacher-1" and request["body"]["temperature"] == 0.5
    assert "Correct answer: 2" in request["body"]["messages"][-1]["content"]
    text = out.read_text()
    assert SECRET not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["accepted"] for r in records] == [False, True, False, True, False, True]
    assert [r["reason"] for r in records[:5:2]] == ["wrong answer", "wrong answer", "format"]
    assert read_demos_jsonl(out) == result.demos  # the file alone gives back the accepted demos


def test_teacher_without_key_sends_no_authorization(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    task = DoubleTask(2)
    with TeacherServer() as server:
        result = run_teacher(server, task, tmp_path / "t.jsonl", concurrency=4)
    assert result.accepted == 2
    assert all("Authorization" not in r["headers"] for r in server.requests)


def test_teacher_concurrency_limit_and_example_order(tmp_path):
    task = DoubleTask(6)
    in_flight, peak, lock = [0], [0], threading.Lock()

    def script(i, body):  # 0.2 s per request; count how many are open at once
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.2)
        with lock:
            in_flight[0] -= 1
        return Reply()

    with TeacherServer(script) as server:
        result = run_teacher(server, task, tmp_path / "t.jsonl", concurrency=2)
    assert peak[0] == 2  # 6 requests, 2 at a time
    assert [d.ground_truth for d in result.demos] == ["2", "4", "6", "8", "10", "12"]


def test_teacher_honours_retry_after_on_429(tmp_path):
    task = DoubleTask(1)
    script = lambda i, body: Reply(429, headers={"retry-after-ms": "300"}) if i == 0 else Reply()
    with TeacherServer(script) as server:
        # back-off alone would wait <= 0.001 s; the server asks for 0.3 s
        result = run_teacher(server, task, tmp_path / "t.jsonl", backoff_base_s=0.001)
    assert (len(server.requests), result.accepted, result.retries) == (2, 1, 1)
    assert server.requests[1]["time"] - server.requests[0]["time"] >= 0.29


def test_teacher_retries_5xx_then_succeeds_or_fails(tmp_path):
    task = DoubleTask(1)
    with TeacherServer(lambda i, body: Reply(500) if i < 3 else Reply()) as server:
        result = run_teacher(server, task, tmp_path / "a.jsonl", max_retries=5)
    assert (len(server.requests), result.accepted, result.retries) == (4, 1, 3)  # 3 x 500, then 200

    out = tmp_path / "b.jsonl"
    with TeacherServer(lambda i, body: Reply(503)) as server:
        result = run_teacher(server, task, out, max_retries=2)
    assert (len(server.requests), result.failed, result.demos) == (3, 1, [])  # 1 try + 2 retries
    assert out.read_text() == ""  # a failed example is not "finished": a re-run asks again


def test_teacher_time_out_fires_and_retry_succeeds(tmp_path):
    task = DoubleTask(1)
    with TeacherServer(lambda i, body: Reply(delay=3.0) if i == 0 else Reply()) as server:
        result = run_teacher(server, task, tmp_path / "t.jsonl", timeout_s=0.3)
    assert (len(server.requests), result.accepted, result.retries) == (2, 1, 1)


def test_teacher_auth_error_aborts_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with TeacherServer(lambda i, body: Reply(401)) as server:
        with pytest.raises(TeacherAPIError, match=f"HTTP 401.*\\${KEY_ENV}"):
            run_teacher(server, DoubleTask(3), tmp_path / "t.jsonl")
    assert len(server.requests) == 1  # no retries, no other examples


def test_teacher_resumes_after_server_dies(tmp_path):
    task = DoubleTask(6)
    out = tmp_path / "t.jsonl"
    with TeacherServer(lambda i, body: Reply() if i < 3 else Reply(500)) as server:
        with pytest.raises(TeacherAPIError, match="re-run to resume"):
            # n = 4 and 5 fail (1 try + 1 retry each): 2 failures in a row abort the job
            run_teacher(server, task, out, max_retries=1, abort_after_failures=2)
    assert len(out.read_text().splitlines()) == 3
    with out.open("a") as fh:
        fh.write('{"key": "torn line of a killed job", "ques')  # no newline: cut mid-write
    with TeacherServer() as server:
        result = run_teacher(server, task, out)
    assert server.questions() == ["What is 2 * 4?", "What is 2 * 5?", "What is 2 * 6?"]
    assert (result.requested, result.resumed, len(result.demos)) == (3, 3, 6)
    assert [d.ground_truth for d in result.demos] == ["2", "4", "6", "8", "10", "12"]


def test_teacher_resumes_after_interrupt_and_skips_duplicates(tmp_path):
    task = DoubleTask(5)
    out = tmp_path / "t.jsonl"

    class Interrupt(Exception):
        pass

    def stop_after_two(result):  # like Ctrl-C after the 2nd finished example
        if result.accepted == 2:
            raise Interrupt

    with TeacherServer() as server:
        with pytest.raises(Interrupt):
            run_teacher(server, task, out, progress=stop_after_two)
        result = run_teacher(server, task, out, examples=task.examples + task.examples[:1])
    # first run: 2 requests; second: the 3 missing ones (the duplicate of n = 1 is skipped)
    assert server.questions() == [f"What is 2 * {n}?" for n in (1, 2, 3, 4, 5)]
    assert (result.requested, result.resumed, len(result.demos)) == (3, 2, 5)


def test_teacher_demos_list_form_inside_a_running_event_loop(tmp_path):
    task = DoubleTask(2)

    async def notebook_cell():
        return teacher_demos(task, task.examples, base_url=server.base_url, model="m",
                             out_path=tmp_path / "t.jsonl", api_key_env=KEY_ENV)

    with TeacherServer() as server:
        demos = asyncio.run(notebook_cell())
    assert [d.ground_truth for d in demos] == ["2", "4"]
