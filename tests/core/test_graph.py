import pytest

from engine.core.graph import PromptFormatError, parse_prompt, to_prompt


def chain(n):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}}}
    for i in range(2, n + 1):
        prompt[str(i)] = {"class_type": "Add", "inputs": {"a": [str(i - 1), 0]}}
    return prompt


def test_parse_links_and_literals():
    graph = parse_prompt({"1": {"class_type": "Number", "inputs": {"value": 2}},
                          "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0]},
                                "_meta": {"title": "sum"}}})
    assert graph["2"].links()["a"].source == "1"
    assert graph.graph.edges["1", "2"]["inputs"] == ["a", "b"]
    assert graph["1"].literals() == {"value": 2}
    assert to_prompt(graph)["2"]["_meta"] == {"title": "sum"}


def test_value_wrapper_is_a_literal():
    graph = parse_prompt({"1": {"class_type": "X", "inputs": {"v": {"__value__": [1, 2]}}}})
    assert graph["1"].literals() == {"v": [1, 2]}
    assert graph["1"].links() == {}


@pytest.mark.parametrize("bad", [[], "x", {"1": {"inputs": {}}}, {"1": "node"}, {"1": {"class_type": 3}},
                                 {"1": {"class_type": "A", "inputs": [1]}}])
def test_malformed_prompts_raise_format_error(bad):
    with pytest.raises(PromptFormatError):
        parse_prompt(bad)


def test_upstream_only_what_targets_need():
    prompt = chain(5)
    prompt["9"] = {"class_type": "Number", "inputs": {"value": 3}}
    graph = parse_prompt(prompt)
    assert graph.upstream(["3"]) == {"1", "2", "3"}


def test_topological_order_is_deterministic_by_prompt_order():
    prompt = {"c": {"class_type": "Add", "inputs": {"a": ["a", 0], "b": ["b", 0]}},
              "b": {"class_type": "Number", "inputs": {}}, "a": {"class_type": "Number", "inputs": {}}}
    assert parse_prompt(prompt).topological_order() == ["b", "a", "c"]


def test_cycle_is_named():
    graph = parse_prompt({"1": {"class_type": "Add", "inputs": {"a": ["2", 0]}},
                          "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}}})
    cycle = graph.find_cycle()
    assert set(cycle) == {"1", "2"} and cycle[0] == cycle[-1]


def test_ten_thousand_node_chain_has_no_recursion_limit():
    graph = parse_prompt(chain(10_000))
    assert len(graph.topological_order()) == 10_000
    assert len(graph.upstream(["10000"])) == 10_000
