"""Validation: every error kind, all reported at once, in ComfyUI's error shape."""

from engine.core.validate import validate_prompt
from tests.support.reference import load_reference
from tests.support.toy_nodes import toy_registry

REG = toy_registry()


def errors_of(result, node_id):
    return [e["type"] for e in result.node_errors[node_id]["errors"]]


def test_valid_prompt_converts_literals():
    result = validate_prompt({"1": {"class_type": "Number", "inputs": {"value": "7"}},
                              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}, REG)
    assert result.ok and result.outputs == ["2"] and result.node_errors == {}
    assert result.prompt["1"]["inputs"]["value"] == 7


def test_unknown_class_is_prompt_level_like_comfyui():
    result = validate_prompt({"50": {"class_type": "NoSuchNode", "inputs": {}}}, REG)
    expected = load_reference("error_example_unknown_class.json")
    assert result.error["type"] == expected["error"]["type"]
    assert result.error["message"] == expected["error"]["message"]
    assert result.error["details"] == expected["error"]["details"]
    assert result.node_errors == {}


def test_missing_class_type_and_not_a_dict():
    assert validate_prompt({"1": {"inputs": {}}}, REG).error["type"] == "invalid_prompt"
    assert validate_prompt([1, 2], REG).error["type"] == "invalid_prompt"


def test_no_output_node():
    result = validate_prompt({"1": {"class_type": "Number", "inputs": {"value": 1}}}, REG)
    assert result.error["type"] == "prompt_no_outputs"


def test_every_error_reported_at_once():
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 500}},                     # above max
        "2": {"class_type": "Number", "inputs": {"value": -500}},                    # below min
        "3": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": "abc", "mode": "ceil"}},  # type, combo
        "4": {"class_type": "Add", "inputs": {}},                                    # missing required
        "5": {"class_type": "Add", "inputs": {"a": ["99", 0]}},                      # link to missing node
        "6": {"class_type": "Add", "inputs": {"a": ["2", 3]}},                       # output index out of range
        "7": {"class_type": "Add", "inputs": {"a": ["8", 0]}},                       # STRING into INT
        "8": {"class_type": "Text", "inputs": {"text": "hi", "upper": False}},
        "9": {"class_type": "Add", "inputs": {"a": ["1", 0, 5]}},                    # bad link shape
        "10": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
        "11": {"class_type": "Show", "inputs": {"value": ["4", 0]}},
        "12": {"class_type": "Show", "inputs": {"value": ["5", 0]}},
        "13": {"class_type": "Show", "inputs": {"value": ["6", 0]}},
        "14": {"class_type": "Show", "inputs": {"value": ["7", 0]}},
        "15": {"class_type": "Show", "inputs": {"value": ["9", 0]}},
    }
    result = validate_prompt(prompt, REG)
    assert not result.ok
    assert result.error["type"] == "prompt_outputs_failed_validation"
    assert errors_of(result, "1") == ["value_bigger_than_max"]
    assert errors_of(result, "3") == ["invalid_input_type", "value_not_in_list"]
    assert errors_of(result, "4") == ["required_input_missing"]
    assert errors_of(result, "5") == ["exception_during_inner_validation"]
    assert errors_of(result, "6") == ["bad_linked_input"]
    assert errors_of(result, "7") == ["return_type_mismatch"]
    assert errors_of(result, "9") == ["bad_linked_input"]
    assert "2" in result.node_errors  # below min, reported though it feeds a node with its own error
    assert errors_of(result, "2") == ["value_smaller_than_min"]
    assert result.node_errors["1"]["dependent_outputs"] == ["10"]
    assert result.node_errors["1"]["class_type"] == "Number"
    # Nodes invalid only because an upstream failed are not listed.
    assert "10" not in result.node_errors


def test_error_detail_names_input_value_and_expectation():
    result = validate_prompt({"1": {"class_type": "Number", "inputs": {"value": 0}},
                              "2": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 11.0,
                                                                     "mode": "round"}},
                              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}, REG)
    err = result.node_errors["2"]["errors"][0]
    assert err["message"] == "Value 11.0 bigger than max of 10.0"
    assert err["details"] == "factor"
    assert err["extra_info"]["input_name"] == "factor"
    assert err["extra_info"]["received_value"] == 11.0
    assert err["extra_info"]["input_config"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0}]


def test_range_error_matches_comfyui_capture_shape():
    expected = load_reference("error_example_range.json")
    result = validate_prompt({"1": {"class_type": "Number", "inputs": {"value": -101}},
                              "100": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}, REG)
    ours = result.response()
    assert set(ours) == set(expected)
    assert set(ours["error"]) == set(expected["error"])
    exp_err = expected["node_errors"]["1"]["errors"][0]
    our_err = ours["node_errors"]["1"]["errors"][0]
    assert set(our_err) == set(exp_err) and set(our_err["extra_info"]) == set(exp_err["extra_info"])
    assert ours["node_errors"]["1"]["dependent_outputs"] == ["100"]


def test_bad_link_matches_comfyui_capture_shape():
    expected = load_reference("error_example_bad_link.json")
    result = validate_prompt({"50": {"class_type": "Add", "inputs": {"a": ["nonexistent", 0]}},
                              "100": {"class_type": "Show", "inputs": {"value": ["50", 0]}}}, REG)
    our_err = result.node_errors["50"]["errors"][0]
    exp_err = expected["node_errors"]["50"]["errors"][0]
    assert our_err["type"] == exp_err["type"] and our_err["details"] == exp_err["details"]
    assert set(our_err["extra_info"]) == set(exp_err["extra_info"])


def test_cycle_is_reported_naming_the_cycle():
    result = validate_prompt({"1": {"class_type": "Add", "inputs": {"a": ["2", 0]}},
                              "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}},
                              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}, REG)
    assert not result.ok
    cycle_errors = [e for e in result.node_errors["1"]["errors"] if e["type"] == "dependency_cycle"]
    assert cycle_errors and "1" in cycle_errors[0]["details"] and "2" in cycle_errors[0]["details"]


def test_literal_for_a_socket_and_wrong_literal_types():
    result = validate_prompt({"1": {"class_type": "Describe", "inputs": {"thing": 5}},
                              "2": {"class_type": "Text", "inputs": {"text": {"x": 1}, "upper": "maybe"}},
                              "3": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
                              "4": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}, REG)
    assert errors_of(result, "1") == ["invalid_input_type"]
    assert errors_of(result, "2") == ["invalid_input_type", "invalid_input_type"]


def test_boolean_strings_are_parsed_not_truthy():
    result = validate_prompt({"1": {"class_type": "Text", "inputs": {"text": "a", "upper": "false"}},
                              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}, REG)
    assert result.ok and result.prompt["1"]["inputs"]["upper"] is False


def test_custom_validation_hook():
    result = validate_prompt({"1": {"class_type": "EvenOnly", "inputs": {"value": 3}},
                              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}, REG)
    err = result.node_errors["1"]["errors"][0]
    assert err["type"] == "custom_validation_failed" and "must be even" in err["details"]


def test_partial_failure_keeps_valid_outputs():
    result = validate_prompt({"1": {"class_type": "Number", "inputs": {"value": 1}},
                              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
                              "3": {"class_type": "Add", "inputs": {}},
                              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}, REG)
    assert result.ok and result.outputs == ["2"] and "3" in result.node_errors


def test_partial_execution_targets():
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    assert validate_prompt(prompt, REG, partial_targets=["3"]).outputs == ["3"]
    assert validate_prompt(prompt, REG, partial_targets=["9"]).error["type"] == "prompt_no_outputs"


def test_unneeded_broken_nodes_are_ignored():
    result = validate_prompt({"1": {"class_type": "Number", "inputs": {"value": 1}},
                              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
                              "3": {"class_type": "Add", "inputs": {}}}, REG)
    assert result.ok and result.node_errors == {}


def test_ten_thousand_node_chain_validates():
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}}}
    for i in range(2, 10_001):
        prompt[str(i)] = {"class_type": "Add", "inputs": {"a": [str(i - 1), 0]}}
    prompt["out"] = {"class_type": "Show", "inputs": {"value": ["10000", 0]}}
    assert validate_prompt(prompt, REG).ok


def test_hooks_that_name_folders_receive_the_folder_layout(tmp_path):
    from engine.core.executor import Executor
    from engine.core.registry import NodeRegistry
    from engine.core.schema import Output, String, node

    seen = {}

    def exists(name, folders=None):
        seen["validate"] = folders
        return True if (folders / name).exists() else f"no file {name}"

    def changed(name, folders=None):
        seen["changed"] = folders
        return (folders / name).read_text()

    @node("ReadFile", inputs=[String("name")], outputs=[Output("STRING")], validate_inputs=exists,
          is_changed=changed)
    def read_file(ctx, name):
        return ((ctx.folders / name).read_text(),)

    reg = NodeRegistry([read_file, *REG])
    prompt = {"1": {"class_type": "ReadFile", "inputs": {"name": "a.txt"}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    result = validate_prompt(prompt, reg, folders=tmp_path)
    assert result.node_errors["1"]["errors"][0]["details"] == "no file a.txt"
    (tmp_path / "a.txt").write_text("v1")
    assert validate_prompt(prompt, reg, folders=tmp_path).ok and seen["validate"] == tmp_path
    ex = Executor(reg, folders=tmp_path)
    assert ex.execute(prompt, "a").outputs["2"]["text"] == ["'v1'"]
    assert ex.execute(prompt, "b").executed == []
    (tmp_path / "a.txt").write_text("v2")
    assert ex.execute(prompt, "c").outputs["2"]["text"] == ["'v2'"] and seen["changed"] == tmp_path


def test_value_not_in_list_suggests_close_matches():
    result = validate_prompt({"1": {"class_type": "Number", "inputs": {"value": 1}},
                              "2": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 1.0,
                                                                     "mode": "flor"}},
                              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}, REG)
    err = result.node_errors["2"]["errors"][0]
    assert err["extra_info"]["close_matches"] == ["floor"]
    assert "did you mean 'floor'" in err["details"]


def test_a_file_of_a_kind_the_input_does_not_offer_says_so():
    from engine.core.validate import _kind_not_offered

    models = ["flux1-dev.safetensors", "flux1-schnell.safetensors"]
    assert _kind_not_offered("flux1-dev-Q4_K.gguf", models) == "; this input offers no '.gguf' files"
    assert _kind_not_offered("flux1-dve.safetensors", models) == ""  # a typo: close matches say more
    assert _kind_not_offered("flor", ["floor"]) == "" and _kind_not_offered(3, ["floor"]) == ""


def test_graph_validators_report_on_the_blamed_node():
    from engine.core.registry import NodeRegistry

    from tests.support.toy_nodes import NODES

    reg = NodeRegistry(NODES)
    reg.graph_validators.append(
        lambda prompt, folders: {"1": "two Numbers disagree"} if len(prompt) > 2 else {})
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    assert validate_prompt(prompt, reg).ok
    prompt["3"] = {"class_type": "Number", "inputs": {"value": 2}}
    result = validate_prompt(prompt, reg)
    assert not result.ok and result.node_errors["1"]["errors"][0]["details"] == "two Numbers disagree"


def test_a_graph_validator_that_raises_fails_the_prompt_on_its_first_node():
    from engine.core.registry import NodeRegistry

    from tests.support.toy_nodes import NODES

    reg = NodeRegistry(NODES)

    def broken(prompt, folders):
        raise RuntimeError("checker bug")

    reg.graph_validators.append(broken)
    result = validate_prompt({"1": {"class_type": "Number", "inputs": {"value": 1}},
                              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}, reg)
    assert not result.ok
    error = result.node_errors["1"]["errors"][0]
    assert error["type"] == "exception_during_validation" and error["details"] == "checker bug"
