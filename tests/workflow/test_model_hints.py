"""A missing model names what to get: the download hints a UI workflow carries (nodes' `properties.models`,
the top-level `models` list) survive conversion and appear in the validation error and the CLI's output."""

from __future__ import annotations

import json
from pathlib import Path

from engine import cli
from engine.workflow.convert import annotate_node_errors, convert_request, convert_ui_workflow
from engine.workflow.model_hints import add_download_hints, workflow_model_hints
from tests.support.flux import make_runtime, zoo_base

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ui" / "flux_dev_with_model_hints.json"
HF = "https://huggingface.co/"
EXPECTED = {  # UI node id -> the hint its missing file gets
    "10": {"name": "flux1-dev.safetensors", "directory": "diffusion_models",
           "url": HF + "black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors"},
    "11": {"name": "t5xxl_fp16.safetensors", "directory": "text_encoders",
           "url": HF + "comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors"},
    "12": {"name": "ae.safetensors", "url": HF + "black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors",
           "directory": "vae"},  # from the workflow's top-level `models`
}


def _workflow() -> dict:
    return json.loads(FIXTURE.read_text())


def test_hints_are_read_from_nodes_and_the_top_level_and_kept_by_conversion() -> None:
    workflow = _workflow()
    assert sorted(h["name"] for h in workflow_model_hints(workflow)) == sorted(h["name"] for h in EXPECTED.values())
    runtime = make_runtime()
    conversion = convert_ui_workflow(workflow, runtime.registry)
    assert sorted(conversion.models, key=lambda h: h["name"]) == sorted(EXPECTED.values(), key=lambda h: h["name"])
    status, body = convert_request({"workflow": workflow}, runtime.registry)
    assert status == 200 and body["models"] == conversion.models
    assert workflow_model_hints(json.dumps(workflow)) == conversion.models  # the JSON text, as a PNG holds it


def test_the_missing_model_error_names_what_to_get() -> None:
    runtime = make_runtime()
    conversion = convert_ui_workflow(_workflow(), runtime.registry)
    result = runtime.validate(conversion.prompt)
    assert not result.ok
    errors = annotate_node_errors(result.node_errors, conversion)
    for node_id, hint in EXPECTED.items():
        (error,) = errors[node_id]["errors"]
        assert error["type"] in ("value_not_in_list", "custom_validation_failed")
        assert error["extra_info"]["download"] == hint
        assert hint["url"] in error["details"] and f"models/{hint['directory']}/" in error["details"]
    # found models and other errors get no hint; nothing without hints changes
    assert add_download_hints(result.node_errors, []) is result.node_errors
    plain = {"1": {"errors": [{"type": "value_not_in_list", "details": "x",
                               "extra_info": {"received_value": "euler"}}]}}
    assert add_download_hints(plain, list(EXPECTED.values())) == plain


def test_the_cli_prints_the_hints_for_ui_workflows_and_prompt_bodies(tmp_path, capsys) -> None:
    assert cli.main(["validate", str(FIXTURE), "--base-dir", str(zoo_base())]) == cli.EXIT_INVALID
    err = capsys.readouterr().err
    for hint in EXPECTED.values():
        assert f"download {hint['name']} from {hint['url']} into models/{hint['directory']}/" in err
    # an API prompt saved with its extra_data (as POST /prompt sends it) carries the editor's workflow too
    runtime = make_runtime()
    body = {"prompt": convert_ui_workflow(_workflow(), runtime.registry).prompt,
            "extra_data": {"extra_pnginfo": {"workflow": _workflow()}}}
    saved = tmp_path / "body.json"
    saved.write_text(json.dumps(body))
    assert cli.main(["validate", str(saved), "--base-dir", str(zoo_base()), "--json"]) == cli.EXIT_INVALID
    node_errors = json.loads(capsys.readouterr().out)["node_errors"]
    assert {nid: e["errors"][0]["extra_info"]["download"] for nid, e in node_errors.items()} == EXPECTED


def test_post_prompt_answers_the_hints_of_the_workflow_in_extra_data() -> None:
    from types import SimpleNamespace

    from engine.server.errors import ApiError
    from engine.server.routes_prompt import _validate_and_queue

    runtime = make_runtime()
    state = SimpleNamespace(runtime=runtime, queue=SimpleNamespace(has_prompt_id=lambda _: False))
    submission = {"prompt_id": "p", "prompt": convert_ui_workflow(_workflow(), runtime.registry).prompt,
                  "targets": None, "extra_data": {"extra_pnginfo": {"workflow": _workflow()}}}
    try:
        _validate_and_queue(state, submission)
    except ApiError as exc:
        assert exc.status == 400
        node_errors = exc.body()["node_errors"]
    else:
        raise AssertionError("a prompt with missing models was accepted")
    assert {nid: e["errors"][0]["extra_info"]["download"] for nid, e in node_errors.items()} == EXPECTED
    json.dumps(node_errors)  # the answer serialises
