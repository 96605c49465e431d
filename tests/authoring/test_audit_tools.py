"""Tool-shaped audit probes: destructive calls, invented tools, a final answer with no tool use.

On the bundled tool environment (calculator-tools) they earn nothing; on a key-value store whose
weak rubric pays for any call and any final answer, each earns reward and fails the audit; with a
rubric that checks the store, none does."""

from __future__ import annotations

from pathlib import Path

import pytest

import envhub
from envhub.authoring.audit import TOOL_PROBES, audit, tool_probe_answer
from envhub.errors import AuditFailed
from test_audit import home  # noqa: F401 - the audit's isolated home, with no judge configured

KV_STORE = '''
import json
import re

from envhub import ChatEnv, Reply, Rubric, criterion, system, tool, user

CALL = re.compile(r"<tool>(.*?)</tool>", re.S)
START = {"alpha": "1", "beta": "2", "gamma": "3", "delta": "4", "epsilon": "5"}
KEY = {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}


@criterion(weight=0.5)
def called_a_tool(episode):
    """Weak: any call at all, to any tool, with any result."""
    return bool(episode.state.get("calls"))


@criterion(weight=0.5)
def answered(episode):
    """Weak: any final answer."""
    return "<answer>" in episode.completion


@criterion
def stored(episode):
    """The value is stored under the key, and every other key is as it was."""
    store = episode.state.get("store", {})
    return store == {**START, episode.task["key"]: episode.task["value"]}


class KvStore(ChatEnv):
    max_turns = 8
    tools = [
        {"name": "set_key", "description": "Store a value under a key.",
         "parameters": {"type": "object", "properties": {"key": {"type": "string"}, "value": {"type": "string"}},
                        "required": ["key", "value"]}},
        {"name": "get_key", "description": "Read the value of a key.", "parameters": KEY},
        {"name": "list_keys", "description": "The keys in the store, as a JSON list.", "parameters": {"type": "object"}},
        {"name": "delete_key", "description": "Delete a key ('*': every key).", "parameters": KEY},
    ]
    tool_call_template = "<tool>{call}</tool>"

    def __init__(self, *, strict=False, wildcards=True, **kwargs):
        super().__init__(**kwargs)
        self.rubric = Rubric([stored] if strict else [called_a_tool, answered], name="kv-store")
        self.wildcards = wildcards

    def tasks(self, split):
        return [{"id": f"t{i}", "key": f"k{i}", "value": f"v{i}"} for i in range(4)]

    def setup_episode(self, episode):
        episode.state["store"] = dict(START)

    def initial_messages(self, task):
        return [system("Use the tools, then answer <answer>done</answer>."),
                user(f"Store {task['value']!r} under {task['key']!r}; leave the other keys alone.")]

    def respond(self, episode, action):
        if "<answer>" in action:
            return Reply(done=True)
        store, replies = episode.state["store"], []
        for text in CALL.findall(action)[:4]:
            episode.state.setdefault("calls", []).append(text)
            try:
                call = json.loads(text)
                name, args = call["name"], call.get("arguments") or {}
            except (ValueError, KeyError, TypeError):
                replies.append(tool("error: not a call"))
                continue
            if name == "set_key":
                store[str(args.get("key"))] = str(args.get("value"))
                replies.append(tool("ok"))
            elif name == "get_key":
                replies.append(tool(store.get(str(args.get("key")), "error: no such key")))
            elif name == "list_keys":
                replies.append(tool(json.dumps(sorted(store))))
            elif name == "delete_key":
                key = str(args.get("key"))
                if key == "*" and self.wildcards:
                    store.clear()
                else:
                    store.pop(key, None)
                replies.append(tool("deleted"))
            else:
                replies.append(tool(f"error: no tool {name!r}"))
        return Reply(replies or [user("Call a tool or answer.")])

    def reference_action(self, episode):
        if not any(m["role"] == "tool" for m in episode.messages):
            call = {"name": "set_key", "arguments": {"key": episode.task["key"], "value": episode.task["value"]}}
            return f"<tool>{json.dumps(call)}</tool>"
        return "<answer>done</answer>"


def make_env(**kwargs):
    return KvStore(**kwargs)
'''


@pytest.fixture
def kv_store(one_module_env) -> Path:
    return one_module_env("kv-store", "kv_env", KV_STORE, "max_turns = 8\n")


def test_the_bundled_tool_environment_pays_nothing_for_tool_probes(home):
    report = audit("calculator-tools", tasks=3)
    assert [p.probe for p in report.tool_probes] == list(TOOL_PROBES)
    by_name = {p.probe: p for p in report.tool_probes}
    assert by_name["destructive_calls"].skipped and not by_name["destructive_calls"].rewards  # nothing deletes
    for name in ("invented_tools", "answer_without_tools"):
        assert by_name[name].rewards == [0.0, 0.0, 0.0], by_name[name]
    assert '"name": "get_answer"' in by_name["invented_tools"].example
    assert by_name["answer_without_tools"].example == "<answer>done</answer>"  # the reference's last message, emptied
    assert report.passed, report.failures
    assert "tool_probes" in report.to_dict()


def test_a_weak_tool_rubric_that_pays_for_them_fails(kv_store, home):
    report = audit(str(kv_store), tasks=2)
    earned = {p.probe: p.mean for p in report.tool_probes}
    assert earned == {"destructive_calls": 1.0, "invented_tools": 1.0, "answer_without_tools": 0.5}
    assert not report.passed
    assert {f.split()[0] for f in report.failures} >= set(TOOL_PROBES)
    with pytest.raises(AuditFailed, match="a tool probe must earn nothing"):
        audit(str(kv_store), tasks=2, raise_on_fail=True)


def test_a_rubric_that_checks_the_store_pays_nothing_for_them(kv_store, home):
    report = audit(str(kv_store), tasks=2, env_kwargs={"strict": True})
    assert report.reference is not None and report.reference.mean == 1.0
    assert all(p.rewards == [0.0, 0.0] and not p.skipped for p in report.tool_probes)
    assert report.passed, report.failures


@pytest.mark.parametrize("wildcards", [True, False])
def test_the_destructive_probe_deletes_every_key_the_tools_let_it(kv_store, home, wildcards):
    env = envhub.make(kv_store, wildcards=wildcards)
    messages, _ = env.reset(seed=0)
    episode = env.unwrapped.episode
    terminated = truncated = False
    sent = []
    while not (terminated or truncated):
        action = tool_probe_answer("destructive_calls", messages, env.unwrapped.tools, template="<tool>{call}</tool>",
                                   final_reference="<answer>done</answer>", max_turns=8)
        sent.append(action)
        messages, _, terminated, truncated, _ = env.step(action)
    assert episode.state["store"] == {}
    assert '"name": "list_keys"' in sent[0] and '{"key": "*"}' in sent[0]
    assert sent[-1] == "<answer>done</answer>" and terminated
    if not wildcards:  # then one name at a time, as list_keys named them, four calls a message
        assert [s.count("delete_key") for s in sent[1:-1]] == [4, 1]
